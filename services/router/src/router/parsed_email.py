"""What the router reads out of one message, and the field rules both parsers share."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from email_channels.errors import PermanentError
from email_channels.events import Address, EmailFlags, UndecodedHeader
from router.bodies import html_to_text

if TYPE_CHECKING:
    from collections.abc import Callable

MSGID = re.compile(r"<[^<>\s]{1,998}>")
_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+\s*")
"""Every character ``str.splitlines`` breaks at: the stdlib email generator writes each as a
line break, so none may stay in a header value we hand on."""
_AUTO_PRECEDENCE = frozenset({"bulk", "auto_reply", "junk"})


class UnparseableEmail(PermanentError):
    """The bytes are not an email at all (empty, or without any header field)."""


@dataclass(frozen=True)
class AttachmentPart:
    """A non-body MIME part with its decoded content (the handler stores it as a blob)."""

    content_type: str
    content: bytes
    filename: str | None = None
    inline: bool = False
    content_id: str | None = None

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class ParsedEmail:
    """What the router reads out of one message; mirrors :class:`RoutedEmail`'s fields."""

    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    from_: Address | None = None
    reply_to: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    subject: str | None = None
    date: datetime | None = None
    text_body: str | None = None
    """The text a person reads: the text/plain body, else the html body converted to text."""
    html_body: str | None = None
    attachments: tuple[AttachmentPart, ...] = ()
    flags: EmailFlags = field(default_factory=EmailFlags)
    defects: tuple[str, ...] = ()
    """What was wrong with the MIME (for logs); the message still goes through."""
    undecoded_headers: tuple[UndecodedHeader, ...] = ()
    """Header fields sent as raw 8-bit bytes: the charset they were read with, and their hash."""
    parser: str = "stdlib"
    """Which parser read the message: ``fast`` (Rust-backed), ``hybrid`` (our header reading,
    the Rust parser's MIME reading) or ``stdlib``."""

    @property
    def sender_text(self) -> str:
        """The sender as filters see it: display name and address."""
        if self.from_ is None:
            return ""
        return f"{self.from_.name or ''} <{self.from_.address}>"

    @property
    def body_text(self) -> str:
        """The body as filters see it: the text body, else the html body's text."""
        if self.text_body:
            return self.text_body
        if self.html_body:
            return html_to_text(self.html_body)
        return ""


def clean_text(value: str) -> str:
    """Text that encodes as UTF-8: raw 8-bit bytes the parser kept as surrogates are decoded."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "replace")
        return raw.decode("utf-8", errors="replace")
    return value


def one_line(value: str) -> str:
    """One line of clean text: folded lines joined (at every ``str.splitlines`` break), raw
    8-bit bytes (surrogates) decoded."""
    return _LINE_BREAKS.sub(" ", clean_text(value)).strip()


def message_id(value: str | None) -> str | None:
    if not value:
        return None
    found = MSGID.search(value)
    if found:
        return found.group(0)
    words = value.split()
    return words[0] if words else None


def address(name: str | None, addr_spec: str | None) -> Address | None:
    """An Address from a parsed mailbox; None for an empty or null (``<>``) address."""
    spec = one_line(addr_spec or "")
    if not spec or spec == "<>":
        return None
    return Address(name=one_line(name or "") or None, address=spec)


def parse_date(value: str | None) -> tuple[datetime | None, bool]:
    """(date, unreadable): a naive date is taken as UTC."""
    if not value or not value.strip():
        return None, False
    try:
        parsed = parsedate_to_datetime(one_line(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None, True
    return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)), False


def is_auto_reply(header: Callable[[str], str | None]) -> bool:
    """``Auto-Submitted`` other than ``no``, ``X-Autoreply``/``X-Autorespond``, or a bulk
    ``Precedence``."""
    submitted = header("auto-submitted")
    if submitted and submitted.split(";")[0].strip().lower() != "no":
        return True
    if header("x-autoreply") or header("x-autorespond"):
        return True
    precedence = (header("precedence") or "").strip().lower()
    return precedence in _AUTO_PRECEDENCE


def is_loop(*, loop_header: str | None, from_: Address | None, own_address: str | None) -> bool:
    """Our own marker header, or a From address equal to the channel's own address."""
    return loop_header is not None or (
        from_ is not None
        and own_address is not None
        and from_.address.casefold() == own_address.strip().casefold()
    )
