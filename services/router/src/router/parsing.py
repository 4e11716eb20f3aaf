"""Raw MIME bytes -> the fields of a routed email. Pure: no I/O, no Kafka, no blob store.

Tolerance is the rule: mail from the wild is often malformed, so every field is read on its
own and a field that cannot be read is left empty instead of failing the message. Only input
that is not an email at all (empty, or no header field anywhere) raises
:class:`~email_channels.errors.PermanentError`, which the consume loop dead-letters.

Decisions worth knowing:

- **Bodies**: ``get_body`` picks the text and the html body (multipart/alternative, related);
  every other leaf part (including a second text part and embedded ``message/rfc822``) is an
  attachment, so nothing is silently dropped. A charset Python does not know, or bytes that do
  not decode in the declared charset, are decoded with replacement characters.
- **Flags**:
  auto-reply = ``Auto-Submitted`` other than ``no``, ``X-Autoreply``/``X-Autorespond``, or
  ``Precedence: bulk|auto_reply|junk``;
  bounce = ``multipart/report; report-type=delivery-status`` (bounced recipients from the
  ``Final-Recipient`` of failed per-recipient blocks, bounced Message-ID from the returned
  message or headers) or an ``X-Failed-Recipients`` header;
  loop = our own marker header :data:`LOOP_HEADER` (the sender stamps it on outgoing mail) or
  a From address equal to the channel's own address.
- **Conversation id**: the thread root (first References entry, else In-Reply-To, else the
  Message-ID, else the email id) hashed with the channel id, so a thread keeps one id and two
  channels never share one. A client that truncates References splits the thread.
- **Depth**: MIME deeper than :data:`MAX_DEPTH` levels is not descended into (the raw MIME,
  always kept by reference, still holds it).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

from email_channels.errors import PermanentError
from email_channels.events import Address, EmailFlags
from email_channels.headers import LOOP_HEADER

if TYPE_CHECKING:
    from email.headerregistry import Address as HeaderAddress

MAX_DEPTH = 32
"""MIME nesting we descend into; deeper parts stay in the raw MIME only."""

_AUTO_PRECEDENCE = frozenset({"bulk", "auto_reply", "junk"})
_MSGID = re.compile(r"<[^<>\s]+>")
_LINE_BREAKS = re.compile(r"[\r\n]+\s*")


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
    html_body: str | None = None
    attachments: tuple[AttachmentPart, ...] = ()
    flags: EmailFlags = field(default_factory=EmailFlags)
    defects: tuple[str, ...] = ()
    """What was wrong with the MIME (for logs); the message still goes through."""

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


def parse_email(raw: bytes, *, own_address: str | None = None) -> ParsedEmail:
    """Parse raw MIME. ``own_address`` is the channel's address (for loop detection)."""
    if not raw.strip():
        raise UnparseableEmail("empty message")
    try:
        message = BytesParser(policy=policy.default).parsebytes(raw)
    except Exception as exc:  # the stdlib parser is lenient; anything here is exotic
        raise UnparseableEmail(f"MIME parser failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(message, EmailMessage) or not message.keys():
        raise UnparseableEmail("no header fields: not an email message")

    defects: list[str] = [type(d).__name__ for d in message.defects]
    text_part, html_part = _body_parts(message, defects)
    attachments = _attachments(message, {id(text_part), id(html_part)}, defects)
    from_list = _addresses(message, "from", defects)
    from_ = from_list[0] if from_list else None

    return ParsedEmail(
        message_id=_message_id(_header(message, "message-id", defects)),
        in_reply_to=_message_id(_header(message, "in-reply-to", defects)),
        references=tuple(_MSGID.findall(_header(message, "references", defects) or "")),
        from_=from_,
        reply_to=tuple(_addresses(message, "reply-to", defects)),
        to=tuple(_addresses(message, "to", defects)),
        cc=tuple(_addresses(message, "cc", defects)),
        subject=_header(message, "subject", defects),
        date=_date(message, defects),
        text_body=_text(text_part, defects) if text_part is not None else None,
        html_body=_text(html_part, defects) if html_part is not None else None,
        attachments=tuple(attachments),
        flags=_flags(message, from_, own_address, defects),
        defects=tuple(dict.fromkeys(defects)),
    )


def conversation_id(
    channel_id: str,
    *,
    references: tuple[str, ...] | list[str] = (),
    in_reply_to: str | None = None,
    message_id: str | None = None,
    email_id: str,
) -> str:
    """Stable thread id: sha256(channel id, thread root) as 32 hex characters."""
    root = next(iter(references), None) or in_reply_to or message_id or f"email:{email_id}"
    return hashlib.sha256(f"{channel_id}\n{root.strip()}".encode()).hexdigest()[:32]


def html_to_text(html: str) -> str:
    """The visible text of an html body (for matching; not a renderer)."""
    extractor = _TextExtractor()
    try:
        extractor.feed(html)
        extractor.close()
    except Exception:  # html.parser is lenient; keep whatever was read
        return " ".join(extractor.chunks)
    return " ".join(extractor.chunks)


class _TextExtractor(HTMLParser):
    _HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:  # noqa: ARG002
        if tag in self._HIDDEN:
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.chunks.append(data.strip())


# --- headers ------------------------------------------------------------------------------------


def _one_line(value: str) -> str:
    """One line of clean text: folded lines joined, raw 8-bit bytes (surrogates) decoded."""
    return _LINE_BREAKS.sub(" ", clean_text(value)).strip()


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


def _header(message: Message, name: str, defects: list[str]) -> str | None:
    """A header's decoded value on one line; a header that cannot be decoded is its raw text."""
    try:
        value = message.get(name)
    except Exception as exc:
        defects.append(f"{name}: {type(exc).__name__}")
        raw = _raw_header(message, name)
        return _one_line(raw) if raw else None
    if value is None:
        return None
    return _one_line(str(value)) or None


def _raw_header(message: Message, name: str) -> str | None:
    for key, value in message.raw_items():
        if key.lower() == name:
            return str(value)
    return None


def _message_id(value: str | None) -> str | None:
    if not value:
        return None
    found = _MSGID.search(value)
    return found.group(0) if found else value.split()[0]


def _addresses(message: Message, name: str, defects: list[str]) -> list[Address]:
    try:
        header: Any = message.get(name)
        if header is None:
            return []
        parsed: tuple[HeaderAddress, ...] = header.addresses
        pairs = [(a.display_name, a.addr_spec) for a in parsed]
    except Exception as exc:
        defects.append(f"{name}: {type(exc).__name__}")
        raw = _raw_header(message, name)
        pairs = getaddresses([raw]) if raw else []
    result: list[Address] = []
    for display_name, addr_spec in pairs:
        address = _one_line(addr_spec or "")
        if not address or address == "<>":
            continue
        result.append(Address(name=_one_line(display_name) or None, address=address))
    return result


def _date(message: Message, defects: list[str]) -> datetime | None:
    raw = _raw_header(message, "date")
    if not raw:
        return None
    try:
        value = parsedate_to_datetime(_one_line(raw))
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append("date: unparseable")
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --- bodies and attachments ---------------------------------------------------------------------


def _body_parts(
    message: EmailMessage, defects: list[str]
) -> tuple[EmailMessage | None, EmailMessage | None]:
    try:
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
    except RecursionError:
        defects.append("body: nesting too deep")
        return None, None
    except Exception as exc:
        defects.append(f"body: {type(exc).__name__}")
        return None, None
    return (
        text if isinstance(text, EmailMessage) else None,
        html if isinstance(html, EmailMessage) else None,
    )


def _text(part: Message, defects: list[str]) -> str:
    """Decode a text part; an unknown or wrong charset falls back to replacement characters."""
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else str(payload or "").encode()
    charset = part.get_content_charset() or "us-ascii"
    try:
        return data.decode(charset)
    except LookupError:
        defects.append(f"unknown charset {charset!r}")
        return data.decode("utf-8", errors="replace")
    except UnicodeDecodeError:
        defects.append(f"bytes not in charset {charset!r}")
        return data.decode(charset, errors="replace")


def _attachments(message: Message, body_ids: set[int], defects: list[str]) -> list[AttachmentPart]:
    found: list[AttachmentPart] = []
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        content_type = part.get_content_type()
        if part.is_multipart() and content_type != "message/rfc822":
            if depth >= MAX_DEPTH:
                defects.append("mime: nesting deeper than MAX_DEPTH not read")
                continue
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(
                    (child, depth + 1) for child in reversed(payload) if isinstance(child, Message)
                )
            continue
        if id(part) in body_ids:
            continue
        found.append(_attachment(part, content_type, defects))
    return found


def _attachment(part: Message, content_type: str, defects: list[str]) -> AttachmentPart:
    if content_type == "message/rfc822":
        content = _embedded_message_bytes(part, defects)
    else:
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
    try:
        filename = part.get_filename()
    except Exception as exc:
        defects.append(f"filename: {type(exc).__name__}")
        filename = None
    disposition = part.get_content_disposition()
    content_id = _message_id(_header(part, "content-id", defects))
    return AttachmentPart(
        content_type=content_type,
        content=content,
        filename=(_one_line(filename) or None) if filename else None,
        inline=disposition == "inline" or (disposition is None and content_id is not None),
        content_id=content_id.strip("<>") if content_id else None,
    )


def _embedded_message_bytes(part: Message, defects: list[str]) -> bytes:
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if isinstance(inner, Message):
        try:
            return inner.as_bytes(policy=policy.default.clone(linesep="\r\n"))
        except Exception as exc:
            defects.append(f"message/rfc822: {type(exc).__name__}")
            try:
                return inner.as_bytes(policy=policy.compat32)
            except Exception:
                return b""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


# --- flags --------------------------------------------------------------------------------------


def _flags(
    message: Message, from_: Address | None, own_address: str | None, defects: list[str]
) -> EmailFlags:
    bounce, bounced_id, recipients = _bounce(message, defects)
    loop = _header(message, LOOP_HEADER.lower(), defects) is not None or (
        from_ is not None
        and own_address is not None
        and from_.address.casefold() == own_address.strip().casefold()
    )
    return EmailFlags(
        auto_reply=_auto_reply(message, defects),
        bounce=bounce,
        bounced_message_id=bounced_id,
        bounced_recipients=recipients,
        loop=loop,
    )


def _auto_reply(message: Message, defects: list[str]) -> bool:
    submitted = _header(message, "auto-submitted", defects)
    if submitted and submitted.split(";")[0].strip().lower() != "no":
        return True
    if _header(message, "x-autoreply", defects) or _header(message, "x-autorespond", defects):
        return True
    precedence = (_header(message, "precedence", defects) or "").strip().lower()
    return precedence in _AUTO_PRECEDENCE


def _bounce(message: Message, defects: list[str]) -> tuple[bool, str | None, list[str]]:
    failed_header = _header(message, "x-failed-recipients", defects)
    header_recipients = [a.strip() for a in (failed_header or "").split(",") if a.strip()]
    is_report = (
        message.get_content_type() == "multipart/report"
        and str(message.get_param("report-type", "")).lower() == "delivery-status"
    )
    if not is_report:
        return bool(header_recipients), None, header_recipients
    recipients: list[str] = []
    bounced_id: str | None = None
    payload = message.get_payload()
    for part in payload if isinstance(payload, list) else []:
        if not isinstance(part, Message):
            continue
        content_type = part.get_content_type()
        if content_type == "message/delivery-status":
            recipients.extend(_failed_recipients(part))
        elif content_type in {"message/rfc822", "text/rfc822-headers"} and bounced_id is None:
            bounced_id = _returned_message_id(part, defects)
    return True, bounced_id, list(dict.fromkeys(recipients or header_recipients))


def _failed_recipients(part: Message) -> list[str]:
    """Recipients of per-recipient blocks whose Action is failed (or missing)."""
    blocks = part.get_payload()
    if not isinstance(blocks, list):
        return []
    recipients: list[str] = []
    for block in blocks[1:]:  # the first block is per-message
        if not isinstance(block, Message):
            continue
        action = str(block.get("action", "failed")).strip().lower()
        recipient = block.get("final-recipient") or block.get("original-recipient")
        if recipient and action == "failed":
            address = str(recipient).split(";", 1)[-1].strip()
            if address:
                recipients.append(_one_line(address))
    return recipients


def _returned_message_id(part: Message, defects: list[str]) -> str | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return _message_id(_header(payload[0], "message-id", defects))
    text = part.get_payload(decode=True)
    if isinstance(text, bytes):
        headers = HeaderParser(policy=policy.default).parsestr(
            text.decode("utf-8", errors="replace")
        )
        return _message_id(_header(headers, "message-id", defects))
    return None
