"""MIME parsing: the fields of a routed email, tolerant of what real mail looks like."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from email_channels.errors import PermanentError
from email_channels.headers import LOOP_HEADER
from router.parsing import (
    UnparseableEmail,
    conversation_id,
    html_to_text,
    parse_email,
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("latin-1")


def test_a_plain_message_yields_its_headers_and_body() -> None:
    message = EmailMessage()
    message["From"] = "Alice Customer <alice@customer.example>"
    message["To"] = "support@shop.example, Bob <bob@shop.example>"
    message["Cc"] = "carol@customer.example"
    message["Reply-To"] = "replies@customer.example"
    message["Subject"] = "Where is my order?"
    message["Date"] = "Tue, 03 Jun 2025 10:15:00 +0200"
    message["Message-ID"] = "<m1@customer.example>"
    message.set_content("Hello,\nwhere is my order?\n")

    parsed = parse_email(message.as_bytes())

    assert parsed.message_id == "<m1@customer.example>"
    assert parsed.from_ is not None
    assert (parsed.from_.name, parsed.from_.address) == ("Alice Customer", "alice@customer.example")
    assert [a.address for a in parsed.to] == ["support@shop.example", "bob@shop.example"]
    assert parsed.to[1].name == "Bob"
    assert [a.address for a in parsed.cc] == ["carol@customer.example"]
    assert [a.address for a in parsed.reply_to] == ["replies@customer.example"]
    assert parsed.subject == "Where is my order?"
    assert parsed.date == datetime(2025, 6, 3, 8, 15, tzinfo=UTC)
    assert parsed.date is not None
    assert parsed.date.utcoffset() == timedelta(hours=2)
    assert parsed.text_body == "Hello,\nwhere is my order?\n"
    assert parsed.html_body is None
    assert parsed.attachments == ()
    assert not parsed.flags.auto_reply
    assert not parsed.flags.bounce
    assert not parsed.flags.loop


def test_encoded_words_and_threading_headers_are_decoded() -> None:
    raw = crlf(
        "From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>\n"
        "To: support@shop.example\n"
        "Subject: =?iso-8859-1?q?R=E9clamation?= =?utf-8?b?IOKCrA==?=\n"
        "Message-ID: <r2@example.de>\n"
        "In-Reply-To: <r1@shop.example> (sent earlier)\n"
        "References: <r0@example.de>\n <r1@shop.example>\n"
        "\n"
        "body\n"
    )
    parsed = parse_email(raw)
    assert parsed.from_ is not None
    assert parsed.from_.name == "Jürgen Müller"
    assert parsed.subject == "Réclamation €"
    assert parsed.in_reply_to == "<r1@shop.example>"
    assert parsed.references == ("<r0@example.de>", "<r1@shop.example>")


def test_alternative_bodies_and_attachments() -> None:
    message = EmailMessage()
    message["From"] = "alice@customer.example"
    message["Subject"] = "Photos"
    message.set_content("plain text")
    message.add_alternative("<p>html <img src='cid:logo'></p>", subtype="html")
    payload = message.get_payload()
    assert isinstance(payload, list)
    html_part = payload[1]
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(b"\x89PNG-logo", maintype="image", subtype="png", cid="<logo>")
    message.add_attachment(b"%PDF-1.4 invoice", maintype="application", subtype="pdf",
                           filename="invoice.pdf")  # fmt: skip

    parsed = parse_email(message.as_bytes())

    assert parsed.text_body == "plain text\n"
    assert parsed.html_body is not None
    assert "<img src='cid:logo'>" in parsed.html_body
    by_type = {a.content_type: a for a in parsed.attachments}
    assert set(by_type) == {"image/png", "application/pdf"}
    logo, pdf = by_type["image/png"], by_type["application/pdf"]
    assert logo.content == b"\x89PNG-logo"
    assert logo.inline
    assert logo.content_id == "logo"
    assert pdf.filename == "invoice.pdf"
    assert not pdf.inline
    assert pdf.size == len(b"%PDF-1.4 invoice")
    assert pdf.sha256 == hashlib.sha256(b"%PDF-1.4 invoice").hexdigest()


def test_an_extra_text_part_and_an_attached_message_are_kept_as_attachments() -> None:
    inner = EmailMessage()
    inner["Subject"] = "forwarded"
    inner.set_content("inner body")
    message = EmailMessage()
    message["From"] = "alice@customer.example"
    message.set_content("see attached")
    message.add_attachment("notes", filename="notes.txt")
    message.add_attachment(inner)

    parsed = parse_email(message.as_bytes())

    assert parsed.text_body == "see attached\n"
    types = sorted(a.content_type for a in parsed.attachments)
    assert types == ["message/rfc822", "text/plain"]
    embedded = next(a for a in parsed.attachments if a.content_type == "message/rfc822")
    assert b"inner body" in embedded.content


@pytest.mark.parametrize(
    ("charset", "body", "expected"),
    [
        ("x-unknown-charset", b"caf\xc3\xa9", "café"),  # unknown charset: UTF-8 with replacement
        ("utf-8", b"caf\xe9 ok", "caf\ufffd ok"),  # bytes not in the declared charset
        ("iso-8859-1", b"caf\xe9", "café"),
        ("windows-1252", b"\x93quoted\x94", "\u201cquoted\u201d"),
    ],
)
def test_wrong_or_unknown_charsets_do_not_crash(charset: str, body: bytes, expected: str) -> None:
    raw = (
        b"From: a@b.example\r\nSubject: charset\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body + b"\r\n"
    )
    parsed = parse_email(raw)
    assert parsed.text_body is not None
    assert parsed.text_body.rstrip("\r\n") == expected


def test_raw_8bit_headers_are_decoded_not_surrogates() -> None:
    raw = b"From: J\xc3\xbcrgen <j@example.de>\r\nSubject: Gr\xc3\xbc\xc3\x9fe \xff\r\n\r\nhi\r\n"
    parsed = parse_email(raw)
    assert parsed.subject is not None
    parsed.subject.encode("utf-8")  # no lone surrogates left
    assert parsed.subject.startswith("Grüße")


def test_malformed_mime_gives_what_can_be_read() -> None:
    raw = crlf(
        "From: not an address at all <<<\n"
        "To: ok@shop.example\n"
        "Date: the day after tomorrow\n"
        "Subject: broken\n"
        'Content-Type: multipart/mixed; boundary="never-closed"\n'
        "\n"
        "--never-closed\n"
        "Content-Type: text/plain\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        "this is not base64 !!!\n"
    )
    parsed = parse_email(raw)
    assert parsed.subject == "broken"
    assert parsed.date is None
    assert [a.address for a in parsed.to] == ["ok@shop.example"]
    assert parsed.defects


def test_deeply_nested_multiparts_are_bounded() -> None:
    depth = 200
    head = "".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(depth)
    )
    tail = "".join(f"\n--b{i}--\n" for i in reversed(range(depth)))
    raw = crlf("From: a@b.example\nSubject: deep\n" + head + "Content-Type: text/plain\n\nx" + tail)
    parsed = parse_email(raw)
    assert parsed.subject == "deep"


def test_nesting_beyond_the_depth_bound_is_routed_with_what_could_be_read() -> None:
    """~1000 levels (past the stdlib parser's recursion) is read to the depth bound, flagged."""
    depth = 1000
    head = "".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(depth)
    )
    parsed = parse_email(crlf("From: a@b.example\nSubject: deep\n" + head + "\nx"))
    assert parsed.subject == "deep"
    assert "depth" in parsed.flags.parse_limits


@pytest.mark.parametrize("raw", [b"", b"   \r\n\r\n", b"\r\n\r\nbody without any header"])
def test_input_that_is_not_an_email_is_a_permanent_error(raw: bytes) -> None:
    with pytest.raises(UnparseableEmail):
        parse_email(raw)
    assert issubclass(UnparseableEmail, PermanentError)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    """Any bytes either parse (maybe to little) or raise the permanent error, nothing else."""
    try:
        parsed = parse_email(raw)
    except UnparseableEmail:
        return
    for text in (parsed.subject, parsed.text_body, parsed.html_body):
        if text is not None:
            text.encode("utf-8")


@given(st.text(max_size=300))
def test_arbitrary_header_text_never_crashes(subject: str) -> None:
    raw = (
        b"From: a@b.example\r\nSubject: " + subject.encode("utf-8", "surrogatepass") + b"\r\n\r\nx"
    )
    parsed = parse_email(raw)
    if parsed.subject is not None:
        parsed.subject.encode("utf-8")


# --- flags --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "auto"),
    [
        ("Auto-Submitted: auto-replied", True),
        ("Auto-Submitted: auto-generated; owner-email=x@y.example", True),
        ("Auto-Submitted: no", False),
        ("X-Autoreply: yes", True),
        ("X-Autorespond: on vacation", True),
        ("Precedence: bulk", True),
        ("Precedence: junk", True),
        ("Precedence: auto_reply", True),
        ("Precedence: first-class", False),
    ],
)
def test_auto_replies_are_flagged(header: str, auto: bool) -> None:
    parsed = parse_email(crlf(f"From: a@b.example\n{header}\nSubject: away\n\nI am away\n"))
    assert parsed.flags.auto_reply is auto


DSN = """From: Mail Delivery System <MAILER-DAEMON@mx.shop.example>
To: support@shop.example
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Delivery failed.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.shop.example

Final-Recipient: rfc822; gone@customer.example
Action: failed
Status: 5.1.1

Final-Recipient: rfc822; slow@customer.example
Action: delayed
Status: 4.4.1

--B
Content-Type: text/rfc822-headers

From: support@shop.example
To: gone@customer.example
Message-ID: <reply-1@shop.example>
Subject: Re: order

--B--
"""


def test_a_delivery_status_report_is_a_bounce_with_what_bounced() -> None:
    parsed = parse_email(crlf(DSN))
    assert parsed.flags.bounce
    assert parsed.flags.bounced_recipients == ["gone@customer.example"]
    assert parsed.flags.bounced_message_id == "<reply-1@shop.example>"
    assert parsed.text_body is not None
    assert "Delivery failed." in parsed.text_body


def test_a_returned_full_message_gives_the_bounced_message_id() -> None:
    dsn = DSN.replace("text/rfc822-headers", "message/rfc822").replace(
        "Subject: Re: order\n", "Subject: Re: order\n\nbody of the reply\n"
    )
    parsed = parse_email(crlf(dsn))
    assert parsed.flags.bounced_message_id == "<reply-1@shop.example>"


def test_x_failed_recipients_marks_a_bounce() -> None:
    raw = crlf(
        "From: MAILER-DAEMON@x.example\nX-Failed-Recipients: a@b.example, c@d.example\n\nx\n"
    )
    flags = parse_email(raw).flags
    assert flags.bounce
    assert flags.bounced_recipients == ["a@b.example", "c@d.example"]


def test_loops_are_flagged_by_our_header_or_our_own_address() -> None:
    marked = crlf(f"From: x@y.example\n{LOOP_HEADER}: ch-1\nSubject: s\n\nx\n")
    assert parse_email(marked).flags.loop
    own = crlf("From: Support <Support@Shop.example>\nSubject: s\n\nx\n")
    assert parse_email(own, own_address="support@shop.example").flags.loop
    assert not parse_email(own, own_address="other@shop.example").flags.loop
    assert not parse_email(own).flags.loop


# --- conversation id ----------------------------------------------------------------------------


def test_a_thread_keeps_one_conversation_id() -> None:
    first = conversation_id("ch-1", message_id="<a@x>", email_id="e1")
    reply = conversation_id("ch-1", in_reply_to="<a@x>", message_id="<b@y>", email_id="e2")
    deeper = conversation_id(
        "ch-1",
        references=["<a@x>", "<b@y>"],
        in_reply_to="<b@y>",
        message_id="<c@x>",
        email_id="e3",
    )
    assert first == reply == deeper
    assert len(first) == 32
    assert all(c in "0123456789abcdef" for c in first)


def test_conversation_ids_differ_by_channel_and_fall_back_to_the_email_id() -> None:
    assert conversation_id("ch-1", message_id="<a@x>", email_id="e") != conversation_id(
        "ch-2", message_id="<a@x>", email_id="e"
    )
    assert conversation_id("ch-1", email_id="e1") != conversation_id("ch-1", email_id="e2")
    assert conversation_id("ch-1", email_id="e1") == conversation_id("ch-1", email_id="e1")


def test_naive_dates_are_taken_as_utc() -> None:
    parsed = parse_email(crlf("From: a@b.example\nDate: Tue, 03 Jun 2025 10:15:00 -0000\n\nx\n"))
    assert parsed.date == datetime(2025, 6, 3, 10, 15, tzinfo=UTC)
    east = parse_email(crlf("From: a@b.example\nDate: Tue, 03 Jun 2025 10:15:00 +0530\n\nx\n"))
    assert east.date == datetime(
        2025, 6, 3, 10, 15, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )


def test_html_to_text_skips_scripts_and_styles() -> None:
    text = html_to_text("<html><head><style>p{}</style></head><body><p>Hi &amp; bye</p>"
                        "<script>var refund=1</script></body></html>")  # fmt: skip
    assert text == "Hi & bye"
