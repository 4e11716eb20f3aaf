"""Pure: an outbound email and its channel become a MIME message and an SMTP envelope.

No I/O here — attachment bytes are loaded beforehand (:mod:`sender.attachments`) — so the
whole mapping is testable in microseconds and the same on every retry:

- **From** is the outbound's ``from`` or else the channel's email address;
- **To / Cc** become headers; **Bcc** goes only into the envelope, never into a header;
- **Message-ID** is derived from the outbound id and the sender's domain, so a retry (or a
  re-delivery after a crash) sends the *same* Message-ID and receivers can drop the copy;
- **Date** is the outbound's ``created_at`` (when the campaign service wrote the mail);
- **In-Reply-To / References** thread the reply; the parent is appended to References;
- text and/or html bodies (``multipart/alternative`` when both), inline parts with a
  Content-ID next to the html (``multipart/related``), other attachments after it.

- the loop header (:data:`email_channels.headers.LOOP_HEADER`, value: the channel id) on every
  message, so the router recognises our own mail coming back in.

Header injection: raw CR/LF is already refused by the event models' validators; every value
written into a header is checked again here, including RFC 2047 encoded-words that decode to
CR/LF (:mod:`sender.headersafety`). A message without attachments (and without SMTPUTF8
addresses) is written directly by :mod:`sender.plainmime`, whose header blocks are scanned for
any line we did not set; any other is built with the stdlib and the flattened message is
parsed back and compared before it can be sent. That, addresses the ``email`` package cannot
write, or a malformed message id raise :class:`~sender.errors.MessageRejected`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from datetime import UTC, datetime
from email import errors as email_errors
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime
from typing import TYPE_CHECKING

from email_channels.headers import LOOP_HEADER
from sender.errors import MessageRejected
from sender.headersafety import SEVEN_BIT, flatten_checked, safe_header_text
from sender.plainmime import render_addresses, unstructured, write_plain
from sender.transports.base import ComposedEmail, Envelope

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from email_channels.events import Address, ChannelConfig, OutboundAttachment, OutboundEmail

_MSG_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")
_DOT_ATOM_ADDRESS = re.compile(
    r"^([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)$"
)
"""local@domain of dot-atoms in ASCII: an address the stdlib parser would accept unchanged."""
_MIME_TYPE = re.compile(r"^([a-z0-9][a-z0-9!#$&^_.+-]*)/([a-z0-9][a-z0-9!#$&^_.+-]*)$")


def compose(
    outbound: OutboundEmail,
    channel: ChannelConfig,
    attachments: Sequence[bytes] = (),
) -> ComposedEmail:
    """Build the message; ``attachments[i]`` holds the bytes of ``outbound.attachments[i]``."""
    if len(attachments) != len(outbound.attachments):
        raise ValueError(
            f"{len(outbound.attachments)} attachments declared, {len(attachments)} loaded"
        )
    sender = _sender(outbound, channel)
    message_id = make_message_id(outbound.outbound_id, sender.domain)

    to = [_address(a, f"to[{i}]") for i, a in enumerate(outbound.to)]
    cc = [_address(a, f"cc[{i}]") for i, a in enumerate(outbound.cc)]
    bcc = [_address(a, f"bcc[{i}]") for i, a in enumerate(outbound.bcc)]
    references = thread_references(outbound.references, outbound.in_reply_to)

    envelope = Envelope(
        mail_from=safe_header_text(channel.email_address or sender.addr_spec, "envelope sender"),
        recipients=_unique(a.addr_spec for a in [*to, *cc, *bcc]),
    )
    utf8 = not all(part.isascii() for part in (envelope.mail_from, *envelope.recipients))
    headers: list[tuple[str, str | list[HeaderAddress]]] = [("From", [sender]), ("To", to)]
    if cc:
        headers.append(("Cc", cc))
    headers += [
        ("Subject", safe_header_text(outbound.subject, "subject")),
        ("Date", format_datetime(_aware(outbound.created_at))),
        ("Message-ID", message_id),
    ]
    if outbound.in_reply_to:
        headers.append(("In-Reply-To", _msg_id(outbound.in_reply_to, "in_reply_to")))
    if references:
        headers.append(("References", " ".join(references)))
    headers.append((LOOP_HEADER, safe_header_text(channel.id, "channel id")))

    if not outbound.attachments and not utf8:
        data = _written_directly(headers, outbound)
        if data is not None:
            return ComposedEmail(envelope=envelope, message_id=message_id, data=data)
    message = EmailMessage(policy=SEVEN_BIT)
    for name, value in headers:
        message[name] = value
    _set_bodies(message, outbound)
    _add_attachments(message, outbound, attachments)
    return ComposedEmail(
        envelope=envelope,
        message_id=message_id,
        data=flatten_checked(message, utf8=utf8),
        utf8=utf8,
        built=message,
    )


def _written_directly(
    headers: list[tuple[str, str | list[HeaderAddress]]], outbound: OutboundEmail
) -> bytes | None:
    """The same message through :mod:`sender.plainmime`; None when only the stdlib can write it."""
    written: list[tuple[str, str]] = []
    for name, value in headers:
        text = unstructured(value) if isinstance(value, str) else render_addresses(value)
        if text is None:
            return None
        written.append((name, text))
    return write_plain(written, text=outbound.text_body, html=outbound.html_body)


def make_message_id(outbound_id: str, domain: str) -> str:
    """``<32 hex digits@domain>``: the same outbound id always gives the same Message-ID.

    The id is hashed rather than copied because outbound ids may hold characters
    (``:``, ``@``) that are not allowed on the left of a Message-ID.
    """
    digest = hashlib.sha256(outbound_id.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{_ascii_domain(domain)}>"


def thread_references(references: Iterable[str], in_reply_to: str | None) -> list[str]:
    """References as given (normalised, duplicates dropped), with the parent appended."""
    ids = [_msg_id(r, f"references[{i}]") for i, r in enumerate(references)]
    if in_reply_to:
        ids.append(_msg_id(in_reply_to, "in_reply_to"))
    return list(_unique(ids))


# --- headers -----------------------------------------------------------------------------------


def _sender(outbound: OutboundEmail, channel: ChannelConfig) -> HeaderAddress:
    if outbound.from_ is not None:
        return _address(outbound.from_, "from")
    if channel.email_address:
        return _address_of(None, channel.email_address, "channel email_address")
    raise MessageRejected(
        f"no sender: the outbound email has no 'from' and channel {channel.id} has no email address"
    )


def _address(address: Address, field: str) -> HeaderAddress:
    return _address_of(address.name, address.address, field)


@functools.lru_cache(maxsize=1024)
def _address_of(name: str | None, addr_spec: str, field: str) -> HeaderAddress:
    """The checked header address (cached: the channel's own address comes with every message;
    a refused one raises every time, errors are not cached)."""
    safe_header_text(name or "", f"{field}.name")
    safe_header_text(addr_spec, f"{field}.address")
    simple = _DOT_ATOM_ADDRESS.match(addr_spec.strip())
    if simple is not None:  # the common case, without the stdlib's full parse (same result)
        return HeaderAddress(
            display_name=name or "", username=simple.group(1), domain=simple.group(2)
        )
    try:
        parsed = HeaderAddress(display_name=name or "", addr_spec=addr_spec.strip())
    except (ValueError, IndexError, email_errors.MessageError) as exc:
        raise MessageRejected(f"{field}: {addr_spec!r} is not a sendable address ({exc})") from exc
    if not parsed.username or not parsed.domain:
        raise MessageRejected(f"{field}: {addr_spec!r} is not an address of the form local@domain")
    return parsed


def _msg_id(value: str, field: str) -> str:
    candidate = safe_header_text(value, field).strip()
    if not candidate.startswith("<"):
        candidate = f"<{candidate}>"
    if not _MSG_ID.match(candidate):
        raise MessageRejected(f"{field}: {value!r} is not a message id (<left@right>)")
    return candidate


def _ascii_domain(domain: str) -> str:
    domain = domain.strip().lower().rstrip(".")
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    """Order kept, duplicates (compared case-insensitively) dropped."""
    seen: set[str] = set()
    result: list[str] = []
    for value in values:
        if value.lower() not in seen:
            seen.add(value.lower())
            result.append(value)
    return tuple(result)


# --- body and attachments ----------------------------------------------------------------------


def _set_bodies(message: EmailMessage, outbound: OutboundEmail) -> None:
    text, html = outbound.text_body, outbound.html_body
    if text is not None and html is not None:
        message.set_content(text)
        message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    else:
        message.set_content(text or "")


def _add_attachments(
    message: EmailMessage, outbound: OutboundEmail, contents: Sequence[bytes]
) -> None:
    html_part = message.get_body(("html",)) if outbound.html_body is not None else None
    pairs = list(zip(outbound.attachments, contents, strict=True))
    # Inline parts referenced from the html first (multipart/related), then the rest.
    for attachment, data in pairs:
        if attachment.inline and attachment.content_id and isinstance(html_part, EmailMessage):
            maintype, subtype = _mime_type(attachment)
            html_part.add_related(
                data,
                maintype,
                subtype,
                cid=_content_id(attachment.content_id),
                disposition="inline",
                filename=_filename(attachment),
            )
    for attachment, data in pairs:
        if attachment.inline and attachment.content_id and isinstance(html_part, EmailMessage):
            continue
        maintype, subtype = _mime_type(attachment)
        message.add_attachment(
            data,
            maintype,
            subtype,
            disposition="inline" if attachment.inline else "attachment",
            filename=_filename(attachment),
            cid=_content_id(attachment.content_id) if attachment.content_id else None,
        )


def _mime_type(attachment: OutboundAttachment) -> tuple[str, str]:
    """The declared type, or application/octet-stream when it is malformed or a container.

    ``multipart/*`` and ``message/*`` cannot be attached as opaque bytes; they travel as
    octet-stream under their file name, which mail clients open just the same.
    """
    match = _MIME_TYPE.match(
        safe_header_text(attachment.content_type, "attachments.content_type").strip().lower()
    )
    if match is None or match.group(1) in {"multipart", "message"}:
        return "application", "octet-stream"
    return match.group(1), match.group(2)


def _filename(attachment: OutboundAttachment) -> str:
    return safe_header_text(attachment.filename, "attachments.filename")


def _content_id(value: str) -> str:
    value = safe_header_text(value, "attachments.content_id").strip().strip("<>")
    return f"<{value}>"
