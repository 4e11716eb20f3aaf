"""The fast path: the Rust-backed ``fast_mail_parser`` (PyPI), where it reads mail as we do.

It parses about two orders of magnitude faster than the stdlib, but it differs from our rules
in places, so :func:`parse` takes a message only when every check holds (else it returns None
and the stdlib path reads the message):

- the header block is plain ASCII, starts at the first byte with a header field and is within
  bounds, with no blank before a colon: the fast parser silently *drops* undecodable 8-bit
  header bytes (measured: ``Fr\\xf6sche`` read as ``Frsche``), does not skip junk lines
  before the headers, and keeps the blank of ``Subject :`` in the field name;
- at most ``max_parts`` parts (counted after the parse; the Rust parser is linear in the
  input: 100,000 parts in ~0.1 s). Nesting is bounded by its own cap (256 levels,
  ``MimeStructureError`` -> stdlib path, which cuts at ``max_depth``);
- 8-bit body text is not declared US-ASCII (or undeclared): the fast parser reads it as
  windows-1252 without a warning, we read it as UTF-8 first;
- the parse reports no repair (``warnings == []``: no unknown charset, no unreadable
  address or date, no re-synced header block);
- at most one text/plain and one text/html body and no embedded ``message/*`` part: the flat
  result then holds exactly the bodies our rules (:mod:`router.bodies`) choose; anything
  richer (several inline texts, alternatives inside mixed parts) needs the tree rules;
- not a delivery report (``multipart/report``): bounce details need the MIME tree;
- no part that looks uuencoded (``begin `` at its start: the stdlib decodes
  ``x-uuencode``, the fast parser does not);
- every Content-Type has a ``/``, every address one ``@`` and no encoded-word, the header
  block no bare CR (garbage the two parsers read differently; found by differential
  fuzzing, ``tests/test_parse_fuzz.py``).

``checked=False`` skips these checks, to measure the fast parser's own fidelity.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import fast_mail_parser
from fast_mail_parser import PyAddress, PyAttachment, PyLazyAttachment, PyMail

from email_channels.events import Address, EmailFlags
from email_channels.headers import LOOP_HEADER
from router.bodies import html_to_text
from router.header_block import FIELD
from router.parsed_email import (
    MSGID,
    AttachmentPart,
    ParsedEmail,
    UnparseableEmail,
    address,
    is_auto_reply,
    is_loop,
    message_id,
    one_line,
    parse_date,
)

if TYPE_CHECKING:
    from router.parse_limits import ParseLimits


def _ascii_or_no_charset(content_type: str, raw: bytes) -> bool:
    """Whether a text part may be 8-bit text declared US-ASCII or not declared at all.

    We read such text as header bytes are (UTF-8 first); the fast parser reads it as
    windows-1252 without a warning (measured). A single-part message must declare a charset
    other than US-ASCII; in a multipart every text Content-Type line must (a charset on a
    folded line is not seen: the stdlib reads the message then).
    """
    if not content_type.lower().startswith("multipart/"):
        found = _CHARSET.search(content_type.encode("ascii", "replace"))
        return found is None or found.group(1).lower() in {b"us-ascii", b"ascii"}
    text_types = _TEXT_TYPE.findall(raw)
    if not text_types:
        return True
    return any(
        found is None or found.group(1).lower() in {b"us-ascii", b"ascii"}
        for found in map(_CHARSET.search, text_types)
    )


_TEXT_TYPE = re.compile(rb"^content-type:[ \t]*text/[^\r\n]*", re.IGNORECASE | re.MULTILINE)
_CHARSET = re.compile(rb"charset=\"?([\w.:-]+)", re.IGNORECASE)
_BOUNDARY = re.compile(r'boundary[ \t]*=[ \t]*(?:"([^"]{1,200})"|([^;\s]{1,200}))', re.IGNORECASE)


def _boundary_present(content_type: str, raw: bytes) -> bool:
    """A multipart whose boundary never occurs: the stdlib keeps the body as one part, the
    fast parser drops it."""
    if not content_type.lower().startswith("multipart/"):
        return True
    found = _BOUNDARY.search(content_type)
    if found is None:
        return False
    boundary = found.group(1) or found.group(2)
    return boundary.isascii() and b"--" + boundary.encode() in raw


_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+\Z")
"""A well-formed media type: the two parsers read malformed ones differently."""
_ADDR_SPEC = re.compile(r"[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+\Z")
"""One ``@``, no specials: the fast parser passes ``a@b.examplea@b.example`` or
``>a@b.example`` through, the stdlib does not."""

_MAX_FAST_HEADER_BYTES = 64 * 1024
_BLANK_BEFORE_COLON = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]+:", re.MULTILINE)
"""``Name :`` (obsolete syntax): the fast parser keeps the blank in the name."""


def eligible(raw: bytes, limits: ParseLimits) -> bool:
    """The byte-level checks, before any parse (cheap: they read the header block only)."""
    if len(raw) > limits.max_decoded_bytes or not FIELD.match(raw):
        return False
    most = min(_MAX_FAST_HEADER_BYTES, limits.max_header_bytes, limits.max_header_field_bytes)
    header_end = raw.find(b"\n\n", 0, most + 2)
    crlf_end = raw.find(b"\n\r\n", 0, header_end + 3 if header_end >= 0 else most + 3)
    if crlf_end >= 0:
        header_end = crlf_end
    if header_end < 0 or header_end > most:
        return False
    header = raw[:header_end]
    if not header.isascii() or _BLANK_BEFORE_COLON.search(header):
        return False
    if header.count(b"\r") != raw.count(b"\r\n", 0, header_end + 1):
        return False  # a bare CR: the two parsers split such lines differently
    return header.count(b"\n") <= limits.max_header_fields


def parse(
    raw: bytes, *, own_address: str | None, limits: ParseLimits, checked: bool = True
) -> ParsedEmail | None:
    """The message read by the fast parser; None when a check says the stdlib must read it."""
    if checked and not eligible(raw, limits):
        return None
    try:
        mail = fast_mail_parser.parse_email(raw)
    except fast_mail_parser.ParseError as exc:
        if checked:
            return None
        raise UnparseableEmail(f"fast parser failed: {type(exc).__name__}: {exc}") from exc
    read = Read(mail)
    if checked and not read.same_as_ours(raw, limits.max_parts):
        return None
    if not read.headers:
        raise UnparseableEmail("no header fields: not an email message")
    return _parsed(mail, read, own_address, limits)


class Read:
    """What the parse gave, each read once (every attribute read copies out of Rust)."""

    def __init__(self, mail: PyMail) -> None:
        self.headers = {name.lower(): values for name, values in mail.headers.items()}
        self.plain = mail.text_plain
        self.html = mail.text_html
        self.attachments = mail.attachments
        self.warnings = mail.warnings
        self.from_ = mail.from_
        self.to = mail.to
        self.cc = mail.cc
        self.reply_to = mail.reply_to
        self.addresses = [*([self.from_] if self.from_ else []), *self.to, *self.cc, *self.reply_to]

    def first(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None

    def same_as_ours(self, raw: bytes, max_parts: int) -> bool:
        original_type = (self.first("content-type") or "").strip()
        content_type = original_type.lower()
        return (
            not self.warnings
            and bool(self.headers)
            and len(self.plain) + len(self.html) + len(self.attachments) <= max_parts
            and len(self.plain) <= 1
            and len(self.html) <= 1
            and not content_type.startswith("multipart/report")
            and not any(a.mimetype.lower().startswith("message/") for a in self.attachments)
            and not (self._non_ascii_text() and _ascii_or_no_charset(original_type, raw))
            and _MEDIA_TYPE.match(content_type.split(";")[0].strip() or "text/plain") is not None
            and _boundary_present(original_type, raw)
            and not any(b"begin " in a.content[:80] for a in self.attachments)
            and not any("begin " in text[:80] for text in self.plain)
            and all("/" in a.mimetype for a in self.attachments)
            and all(_ADDR_SPEC.match(a.address) for a in self.addresses)
            and not any("=?" in a.address for a in self.addresses)
        )

    def _non_ascii_text(self) -> bool:
        return not all(text.isascii() for text in (*self.plain, *self.html))


def _address(found: PyAddress | None) -> Address | None:
    return address(found.display_name, found.address) if found is not None else None


def _addresses(found: list[PyAddress]) -> tuple[Address, ...]:
    return tuple(a for a in (_address(f) for f in found) if a is not None)


def _parsed(mail: PyMail, read: Read, own_address: str | None, limits: ParseLimits) -> ParsedEmail:
    def header(name: str) -> str | None:
        value = read.first(name)
        return (one_line(value) or None) if value is not None else None

    text, html = bodies(read, limits)
    from_ = _address(read.from_)
    date, _ = parse_date(read.first("date"))
    failed = [a.strip() for a in (header("x-failed-recipients") or "").split(",") if a.strip()]
    return ParsedEmail(
        message_id=message_id(header("message-id")),
        in_reply_to=message_id(header("in-reply-to")),
        references=tuple(MSGID.findall(header("references") or ""))[: limits.max_references],
        from_=from_,
        reply_to=_addresses(read.reply_to),
        to=_addresses(read.to),
        cc=_addresses(read.cc),
        subject=one_line(mail.subject) or None,
        date=date,
        text_body=text,
        html_body=html,
        attachments=tuple(attachment(a.mimetype, a.content, a) for a in read.attachments),
        flags=EmailFlags(
            auto_reply=is_auto_reply(header),
            bounce=bool(failed),
            bounced_recipients=failed,
            loop=is_loop(
                loop_header=header(LOOP_HEADER.lower()), from_=from_, own_address=own_address
            ),
        ),
        parser="fast",
    )


def attachment(
    mimetype: str, content: bytes, part: PyAttachment | PyLazyAttachment
) -> AttachmentPart:
    """Our attachment from the fast parser's (content passed in: a lazy one decodes on read)."""
    return AttachmentPart(
        content_type=mimetype.lower(),
        content=content,
        filename=one_line(part.filename) or None,
        inline=part.disposition == "inline"
        or (part.disposition is None and part.content_id is not None),
        content_id=part.content_id,
    )


def bodies(read: Read, limits: ParseLimits) -> tuple[str | None, str | None]:
    """(text, html): an empty text/plain is no body; no text body -> the html as text."""
    text = read.plain[0] if read.plain else None
    html = read.html[0] if read.html else None
    if text is not None and not text.strip() and html:
        text = None
    if text is None and html is not None:
        text = html_to_text(html, max_chars=limits.max_html_chars)
    return text, html
