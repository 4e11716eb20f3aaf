"""Broken header blocks: junk before the first field is skipped and flagged; only bytes with
no header field at all are not an email."""

from __future__ import annotations

import pytest

from router.parsing import UnparseableEmail, parse_email

HEADERS = b"From: Alice <alice@example.com>\r\nSubject: order 42\r\n\r\nWhere is it?\r\n"


@pytest.mark.parametrize(
    "junk",
    [
        b"From alice@example.com Mon Nov 30 10:00:00 2026\r\n",  # mbox From line
        b"\r\n\r\n",  # blank lines
        b"Received by gateway v1.2 at noon\r\n",  # a stray text line
        b"From MAILER-DAEMON Mon Nov 30\r\n\r\n>From x\r\n",  # several kinds together
    ],
)
def test_junk_before_the_headers_is_skipped_and_flagged(junk: bytes) -> None:
    """The headers after the junk are read and ``headers_repaired`` says so."""
    parsed = parse_email(junk + HEADERS)
    assert parsed.subject == "order 42"
    assert parsed.from_ is not None
    assert parsed.from_.address == "alice@example.com"
    assert parsed.text_body is not None
    assert parsed.text_body.startswith("Where is it?")
    assert parsed.flags.headers_repaired


def test_an_indented_first_field_is_read() -> None:
    """A first header line with a leading blank (some gateways) is read as a field."""
    parsed = parse_email(b"  " + HEADERS)
    assert parsed.subject == "order 42"
    assert parsed.flags.headers_repaired


def test_a_blank_before_the_colon_is_read_as_a_field() -> None:
    """``Subject :`` (obsolete syntax) is a field, not the start of the body."""
    parsed = parse_email(b"Subject : hello\r\nFrom: a@b.example\r\n\r\nbody\r\n")
    assert parsed.subject == "hello"
    assert parsed.from_ is not None


def test_a_clean_message_is_not_flagged() -> None:
    """No junk, no flag."""
    assert not parse_email(HEADERS).flags.headers_repaired


@pytest.mark.parametrize(
    "raw",
    [
        b"just some text\r\nwith no header field\r\n",
        b"\r\n" * 40 + HEADERS,  # more junk than the bound: not read as mail
        bytes(range(256)) * 100,
    ],
)
def test_no_header_field_near_the_start_is_dead_lettered(raw: bytes) -> None:
    """Bytes without a header field within the junk bound raise the permanent error."""
    with pytest.raises(UnparseableEmail, match="no header fields"):
        parse_email(raw)
