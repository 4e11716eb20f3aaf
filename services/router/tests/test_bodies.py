"""Body choice: the text a mail client shows, one test per rule of router.bodies."""

from __future__ import annotations

from router.parsing import parse_email


def mime(content_type: str, body: str, *, headers: str = "") -> bytes:
    text = (
        "From: a@b.example\nSubject: s\nMIME-Version: 1.0\n"
        f"Content-Type: {content_type}\n{headers}\n{body}"
    )
    return text.replace("\n", "\r\n").encode()


def part(content_type: str, body: str, extra: str = "") -> str:
    return f"Content-Type: {content_type}\n{extra}\n{body}\n"


def multipart(boundary: str, *parts: str) -> str:
    return "".join(f"--{boundary}\n{p}" for p in parts) + f"--{boundary}--\n"


def test_rule1_an_attachment_is_never_the_body() -> None:
    """A text/plain with disposition attachment is an attachment, the html is the body."""
    raw = mime(
        'multipart/mixed; boundary="m"',
        multipart(
            "m",
            part("text/plain", "log file", "Content-Disposition: attachment\n"),
            part("text/html", "<p>Hello there</p>"),
        ),
    )
    parsed = parse_email(raw, path="stdlib")
    assert parsed.text_body == "Hello there"
    assert [a.content_type for a in parsed.attachments] == ["text/plain"]


def test_rule2_a_single_part_message_is_its_own_body() -> None:
    """text/plain alone is the text; text/html alone gives html and its text."""
    assert parse_email(mime("text/plain", "hi\n")).text_body == "hi\r\n"
    parsed = parse_email(mime("text/html", "<b>hi</b> you\n"))
    assert parsed.html_body == "<b>hi</b> you\r\n"
    assert parsed.text_body == "hi you"


def test_rule3_alternative_takes_the_last_alternative_of_each_kind() -> None:
    """In multipart/alternative the last plain and the last html are what a client shows."""
    raw = mime(
        'multipart/alternative; boundary="a"',
        multipart(
            "a",
            part("text/plain", "old plain"),
            part("text/plain", "new plain"),
            part("text/html", "<p>rich</p>"),
        ),
    )
    parsed = parse_email(raw, path="stdlib")
    assert parsed.text_body is not None
    assert parsed.text_body.startswith("new plain")
    assert parsed.html_body is not None
    assert "rich" in parsed.html_body


def test_rule4_related_shows_its_start_part_not_the_first() -> None:
    """multipart/related with a ``start`` parameter shows that part; the rest are resources."""
    raw = mime(
        'multipart/related; boundary="r"; start="<root@x>"',
        multipart(
            "r",
            part("image/png", "PNG", "Content-ID: <img@x>\n"),
            part("text/html", '<p>see <img src="cid:img@x"></p>', "Content-ID: <root@x>\n"),
        ),
    )
    parsed = parse_email(raw, path="stdlib")
    assert parsed.html_body is not None
    assert "see" in parsed.html_body
    assert [(a.content_type, a.inline) for a in parsed.attachments] == [("image/png", True)]


def test_rule5_mixed_appends_later_inline_text_parts() -> None:
    """Apple Mail splits the text around an inline image: both pieces are in the body."""
    raw = mime(
        'multipart/mixed; boundary="m"',
        multipart(
            "m",
            part("text/plain", "Hello,"),
            part("image/jpeg", "JPEG", "Content-Disposition: inline; filename=a.jpg\n"),
            part("text/plain", "see the photo above."),
        ),
    )
    parsed = parse_email(raw, path="stdlib")
    assert parsed.text_body is not None
    assert "Hello," in parsed.text_body
    assert "see the photo above." in parsed.text_body
    assert [a.filename for a in parsed.attachments] == ["a.jpg"]


def test_rule6_an_empty_plain_alternative_gives_way_to_the_html() -> None:
    """A blank text/plain alternative is no body: the text is the html converted."""
    raw = mime(
        'multipart/alternative; boundary="a"',
        multipart("a", part("text/plain", "  "), part("text/html", "<div>Real message</div>")),
    )
    for path in ("auto", "stdlib"):
        parsed = parse_email(raw, path=path)
        assert parsed.text_body == "Real message", path
