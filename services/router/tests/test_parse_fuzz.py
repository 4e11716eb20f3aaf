"""Parse fuzzing: mail-shaped random input never raises anything but the declared
``UnparseableEmail``, what comes out is clean text (UTF-8, headers on one line), and the fast
path reads what it takes the same as the stdlib path (differential, also on the corpus)."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.parsing import ParseLimits, UnparseableEmail, parse_email

if TYPE_CHECKING:
    from router.parsed_email import ParsedEmail
    from router.parsing import Path

NAMES = ["From", "To", "Cc", "Subject", "Reply-To", "Date", "Message-ID", "In-Reply-To",
         "References", "Content-Type", "Content-Transfer-Encoding", "Content-Disposition",
         "Auto-Submitted", "X-Failed-Recipients", "Content-ID", "MIME-Version"]  # fmt: skip
PIECES = [b"a@b.example", b"<x@y>", b"=?utf-8?q?caf=C3=A9?=", b"=?gbk?b?1dDOxA==?=", b"\xff\xfe",
          "关于".encode("gbk"), "Grüße".encode(), b"\xf6", b'"Q, N" <q@n.example>', b";", b":",
          b"multipart/mixed; boundary=B", b"multipart/alternative; boundary=C", b"text/plain",
          b"text/html; charset=utf-16", b"text/plain; charset=x-unknown", b"base64",
          b"quoted-printable", b"attachment; filename*=utf-8''%E2%82%AC.txt", b"=?", b"?=",
          b"\t", b" ", b"\r\n ", b"\r", b"\n", b"<", b">", b"(comment", b"\\", b"\x85",
          b"\x0b", "\u2028".encode(), b"=?utf-8?q?a=0Db=E2=80=A8c?="]  # fmt: skip
BODIES = [b"--B\r\n", b"--B--\r\n", b"--C\r\n", b"--C--\r\n", b"\r\n", b"hello ", b"<p>x</p>",
          b"SGVsbG8=", b"=E2=82=AC", b"=\r\n", b"\xc4\xe3", b"Content-Type: text/html\r\n",
          b"Content-Transfer-Encoding: base64\r\n", b"From junk line\r\n"]  # fmt: skip

header_value = st.lists(st.sampled_from(PIECES) | st.binary(max_size=8), max_size=6).map(b"".join)
header_line = st.tuples(st.sampled_from(NAMES), header_value).map(
    lambda nv: nv[0].encode() + b": " + nv[1] + b"\r\n"
)
mail = st.tuples(
    st.lists(st.sampled_from([b"From x@y Mon\r\n", b"\r\n", b"junk\r\n", b" "]), max_size=2),
    st.lists(header_line, min_size=1, max_size=12),
    st.lists(st.sampled_from(BODIES) | header_line | st.binary(max_size=16), max_size=30),
).map(lambda t: b"".join(t[0]) + b"".join(t[1]) + b"\r\n" + b"".join(t[2]))

SMALL = ParseLimits(max_parts=20, max_depth=4, max_header_fields=8, max_decoded_bytes=4_000)


def check_clean(parsed: ParsedEmail) -> None:
    for text in (parsed.subject, parsed.message_id, parsed.in_reply_to, *parsed.references):
        if text is not None:
            text.encode("utf-8")
            assert len(text.splitlines()) <= 1, text  # no break the email generator sees
    for body in (parsed.text_body, parsed.html_body):
        if body is not None:
            body.encode("utf-8")
    for address in (parsed.from_, *parsed.to, *parsed.cc, *parsed.reply_to):
        if address is not None:
            address.address.encode("utf-8")
            assert len(((address.name or "") + address.address).splitlines()) <= 1


@pytest.mark.parametrize("path", ["auto", "stdlib", "fast"])
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw=mail)
def test_mail_shaped_input_raises_only_the_declared_error(path: Path, raw: bytes) -> None:
    """Random headers (8-bit, encoded words, junk), MIME pieces and bytes: parse or
    UnparseableEmail, with the default bounds and with tiny ones, on every parser path."""
    for limits in (ParseLimits(), SMALL):
        try:
            parsed = parse_email(raw, path=path, limits=limits)
        except UnparseableEmail:
            continue
        check_clean(parsed)


def _filename(name: str | None) -> str | None:
    """A file name; the generator's RFC 2231 name (``€.txt``) is compared by presence only:
    duplicated ``filename*`` parameters are joined by the stdlib and cut to the first by the
    Rust parser, and neither is wrong."""
    return "<RFC 2231>" if name and ("''" in name or "\u20ac.txt" in name) else name


def same_reading(parsed: ParsedEmail) -> dict[str, object]:
    """The fields both parsers must agree on (line ends and outer blanks of bodies aside)."""
    return {
        "subject": parsed.subject,
        "from": parsed.from_,
        "to": parsed.to,
        "cc": parsed.cc,
        "reply_to": parsed.reply_to,
        "date": parsed.date,
        "text": (parsed.text_body or "").replace("\r\n", "\n").strip(),
        "html": (parsed.html_body or "").replace("\r\n", "\n").strip(),
        "attachments": [
            (a.content_type, _filename(a.filename), a.sha256, a.inline, a.content_id)
            for a in parsed.attachments
        ],
        "flags": (parsed.flags.auto_reply, parsed.flags.bounce, parsed.flags.loop),
    }


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=mail)
def test_where_the_fast_path_is_taken_the_stdlib_reads_the_same(raw: bytes) -> None:
    """Differential: a message the auto path gives to the Rust parser (fast or hybrid) reads
    the same through the stdlib path (the checks keep out what the two disagree on)."""
    try:
        parsed = parse_email(raw)
    except UnparseableEmail:
        return
    if parsed.parser != "stdlib":
        assert same_reading(parsed) == same_reading(parse_email(raw, path="stdlib"))


def test_corpus_mails_on_the_fast_path_read_the_same_through_the_stdlib() -> None:
    """Every corpus mail the auto path gives to the Rust parser (fast or hybrid) has the same
    fields (subject, addresses, date, bodies, attachments, flags) through the stdlib path."""
    corpus = FilePath(__file__).parent / "corpus"
    fast = 0
    for eml in sorted(corpus.glob("*.eml")):
        raw = eml.read_bytes()
        parsed = parse_email(raw)
        if parsed.parser != "stdlib":
            fast += 1
            assert same_reading(parsed) == same_reading(parse_email(raw, path="stdlib")), eml.name
    assert fast >= 20
