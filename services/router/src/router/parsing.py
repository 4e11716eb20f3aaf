"""Raw MIME bytes -> the fields of a routed email. Pure: no I/O, no Kafka, no blob store.

Tolerance is the rule: mail from the wild is often malformed, so every field is read on its
own and a field that cannot be read is left empty instead of failing the message. Only input
that is not an email at all (empty, or no header field near the start) raises
:class:`UnparseableEmail` (a :class:`~email_channels.errors.PermanentError`), which the
consume loop dead-letters.

Three paths (:func:`parse_email`): the Rust-backed ``fast_mail_parser`` where it is known to
read the message the same way (:mod:`router.fast_parse` says when); *hybrid*, our header
reading with its MIME reading, for raw 8-bit or repaired header blocks that pass the same
checks; else the stdlib parser. A differential fuzz test holds the first two to the third.

Decisions worth knowing:

- **Header block** (:mod:`router.header_block`): junk lines before the first header field
  (mbox ``From``, blank lines, a stray text line) are skipped and ``flags.headers_repaired``
  is set; fields and the block are cut to :class:`~router.parse_limits.ParseLimits`.
- **Raw 8-bit header bytes** (:mod:`router.header_text`): decoded (UTF-8, the first text
  part's charset, charset-normalizer, Latin-1), recorded in ``undecoded_headers`` with the
  charset used and the hash of the bytes; the same for display names.
- **Bodies** (:mod:`router.bodies`): the parts a mail client shows; every other leaf part
  (including embedded ``message/rfc822``) is an attachment, so nothing is silently dropped.
  A charset Python does not know, or bytes that do not decode in the declared charset, are
  decoded with replacement characters.
- **Bounds** (:mod:`router.parse_limits`): parts, depth, header count/size, decoded size and
  time; over a bound the message is still read as far as the bound, named in
  ``flags.parse_limits``.
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
"""

from __future__ import annotations

import hashlib
import re
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser, HeaderParser
from email.utils import getaddresses
from typing import TYPE_CHECKING, Any, Literal

import fast_mail_parser

from email_channels.events import Address, EmailFlags, UndecodedHeader
from email_channels.headers import LOOP_HEADER
from router import fast_parse
from router.bodies import BodyParts, choose_bodies, html_to_text, subparts
from router.header_block import HeaderBlock, split_header_block
from router.header_text import decode_8bit, decode_header_value, has_raw_bytes, raw_bytes
from router.parse_limits import DEFAULT_LIMITS, Budget, ParseLimits
from router.parsed_email import (
    MSGID,
    AttachmentPart,
    ParsedEmail,
    UnparseableEmail,
    address,
    clean_text,
    is_auto_reply,
    is_loop,
    message_id,
    one_line,
    parse_date,
)

if TYPE_CHECKING:
    from email.headerregistry import Address as HeaderAddress

__all__ = [
    "MAX_DEPTH",
    "AttachmentPart",
    "ParseLimits",
    "ParsedEmail",
    "UnparseableEmail",
    "clean_text",
    "conversation_id",
    "html_to_text",
    "parse_email",
]

MAX_DEPTH = DEFAULT_LIMITS.max_depth
"""MIME nesting we descend into; deeper parts stay in the raw MIME only."""

_UNFOLD = re.compile(r"\r\n|\r|\n")
_PARSER = BytesParser(policy=policy.compat32)
"""The structure is parsed with compat32 (it keeps header values as raw text); the few
header fields the router reads are then parsed with ``policy.default``'s header classes.
Parsing with ``policy.default`` re-parses a header on every read (measured: ~80% of the
parse time on the corpus, most of it Content-Type lookups during the walk)."""

Path = Literal["auto", "stdlib", "fast"]


def parse_email(
    raw: bytes,
    *,
    own_address: str | None = None,
    limits: ParseLimits = DEFAULT_LIMITS,
    path: Path = "auto",
) -> ParsedEmail:
    """Parse raw MIME. ``own_address`` is the channel's address (for loop detection).

    ``path`` picks the parser: ``auto`` (the fast parser where it reads the message the same
    way, else the stdlib), ``stdlib``, or ``fast`` (the fast parser without that check; for
    measuring its fidelity only).
    """
    if not raw or raw.isspace():
        raise UnparseableEmail("empty message")
    if path != "stdlib":
        parsed = fast_parse.parse(
            raw, own_address=own_address, limits=limits, checked=path == "auto"
        )
        if parsed is not None:
            return parsed
    return _parse_stdlib(raw, own_address=own_address, limits=limits, hybrid=path == "auto")


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


# --- the stdlib path ----------------------------------------------------------------------------


def _parse_stdlib(
    raw: bytes, *, own_address: str | None, limits: ParseLimits, hybrid: bool = False
) -> ParsedEmail:
    block = split_header_block(raw, limits)
    if block is None:
        raise UnparseableEmail("no header fields: not an email message")
    if len(block.message) > limits.max_stdlib_bytes:
        return _parse_large(block, own_address=own_address, limits=limits)
    if hybrid and not block.limits_hit:
        parsed = _parse_hybrid(block, own_address=own_address, limits=limits)
        if parsed is not None:
            return parsed
    return _parse_tree(block, own_address=own_address, limits=limits)


def _parse_tree(block: HeaderBlock, *, own_address: str | None, limits: ParseLimits) -> ParsedEmail:
    """The stdlib parse: the MIME tree, read by our body rules, within the bounds."""
    limits_hit = list(block.limits_hit)
    message = _parse_bounded(block, limits, limits_hit)
    if not message.keys():
        raise UnparseableEmail("no header fields: not an email message")

    defects: list[str] = [type(d).__name__ for d in message.defects]
    headers = _HeaderReader(message, defects, limits)
    budget = Budget(limits.max_parse_s)
    decoded = _DecodedBudget(limits.max_decoded_bytes)
    try:
        bodies = choose_bodies(message, max_depth=limits.max_depth)
    except RecursionError:  # pragma: no cover - the structure bounds make this unreachable
        defects.append("body: nesting too deep")
        bodies = BodyParts()
    text = _joined_text(bodies.plain, defects, decoded)
    html = _joined_text(bodies.html, defects, decoded)
    if text is not None and not text.strip() and html:
        text = None  # rule 6: an empty text/plain is no body
    if text is None and html is not None:
        text = html_to_text(html, max_chars=limits.max_html_chars)
    body_ids = {id(part) for part in (*bodies.plain, *bodies.html)}
    attachments = _attachments(message, body_ids, defects, limits, budget, decoded)
    if decoded.exceeded:
        limits_hit.append("decoded_size")
    if budget.stopped:
        limits_hit.append("time")
    return _assemble(
        message,
        headers,
        defects,
        own_address=own_address,
        limits=limits,
        bodies=(text, html),
        attachments=attachments,
        repaired=block.repaired,
        limits_hit=limits_hit,
    )


def _parse_hybrid(
    block: HeaderBlock, *, own_address: str | None, limits: ParseLimits
) -> ParsedEmail | None:
    """Header fields read by ours (raw 8-bit bytes, junk lines), MIME by the Rust parser, when
    its checks hold for the repaired bytes (:meth:`router.fast_parse.Read.same_as_ours`);
    None: the stdlib reads the message."""
    head = block.message[: block.body_start]
    if head.count(b"\r") != head.count(b"\r\n"):
        return None  # a bare CR: the two parsers split such lines differently
    try:
        mail = fast_mail_parser.parse_email(block.message)
    except fast_mail_parser.ParseError:
        return None
    read = fast_parse.Read(mail)
    if not read.same_as_ours(block.message, limits.max_parts):
        return None
    header_message = BytesHeaderParser(policy=policy.compat32).parsebytes(head)
    if not header_message.keys() or any(
        key.lower() in _STRUCTURE_FIELDS and not str(value).isascii()
        for key, value in header_message.raw_items()
    ):
        return None  # 8-bit bytes in a MIME structure field: the Rust parser drops them
    defects: list[str] = []
    headers = _HeaderReader(
        header_message, defects, limits, declared=_declared_charset(header_message, block)
    )
    text, html = fast_parse.bodies(read, limits)
    return _assemble(
        header_message,
        headers,
        defects,
        own_address=own_address,
        limits=limits,
        bodies=(text, html),
        attachments=[fast_parse.attachment(a.mimetype, a.content, a) for a in read.attachments],
        repaired=block.repaired,
        limits_hit=[],
        parser="hybrid",
    )


_STRUCTURE_FIELDS = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})


def _declared_charset(header_message: Message, block: HeaderBlock) -> str | None:
    """The charset of the first text part, read from the bytes (no MIME tree at hand)."""
    if header_message.get_content_maintype() == "text":
        return header_message.get_content_charset()
    return _first_text_charset_in(
        block.message[block.body_start : block.body_start + _CHARSET_SCAN_BYTES]
    )


def _assemble(
    message: Message,
    headers: _HeaderReader,
    defects: list[str],
    *,
    own_address: str | None,
    limits: ParseLimits,
    bodies: tuple[str | None, str | None],
    attachments: list[AttachmentPart],
    repaired: bool,
    limits_hit: list[str],
    parser: str = "stdlib",
) -> ParsedEmail:
    from_list = headers.addresses("from")
    from_ = from_list[0] if from_list else None
    date, date_unreadable = parse_date(headers.raw_text("date"))
    if date_unreadable:
        defects.append("date: unparseable")
    return ParsedEmail(
        message_id=message_id(headers.text("message-id")),
        in_reply_to=message_id(headers.text("in-reply-to")),
        references=tuple(MSGID.findall(headers.text("references") or ""))[: limits.max_references],
        from_=from_,
        reply_to=tuple(headers.addresses("reply-to")),
        to=tuple(headers.addresses("to")),
        cc=tuple(headers.addresses("cc")),
        subject=headers.text("subject"),
        date=date,
        text_body=bodies[0],
        html_body=bodies[1],
        attachments=tuple(attachments),
        flags=_flags(
            message,
            headers,
            from_,
            own_address,
            defects,
            repaired=repaired,
            limits_hit=tuple(dict.fromkeys(limits_hit)),
        ),
        defects=tuple(dict.fromkeys(defects)),
        undecoded_headers=tuple(headers.undecoded),
        parser=parser,
    )


def _parse_large(
    block: HeaderBlock, *, own_address: str | None, limits: ParseLimits
) -> ParsedEmail:
    """A message too large for the stdlib parser: header fields read by ours (8-bit decoding
    included) from the header block alone, MIME by the Rust parser with lazy attachments."""
    limits_hit = list(block.limits_hit)
    header_message = BytesHeaderParser(policy=policy.compat32).parsebytes(
        block.message[: block.body_start]
    )
    defects: list[str] = []
    headers = _HeaderReader(
        header_message, defects, limits, declared=_declared_charset(header_message, block)
    )
    if not header_message.keys():
        raise UnparseableEmail("no header fields: not an email message")
    decoded = _DecodedBudget(limits.max_decoded_bytes)
    text = html = None
    attachments: list[AttachmentPart] = []
    try:
        mail = fast_mail_parser.parse_email(block.message, mode="lazy")
    except fast_mail_parser.ParseError as exc:
        defects.append(f"mime: {type(exc).__name__}")
        limits_hit.append(
            "depth" if isinstance(exc, fast_mail_parser.MimeStructureError) else "mime"
        )
    else:
        text = next((t for t in mail.text_plain if decoded.take_size(len(t))), None)
        html = next((h for h in mail.text_html if decoded.take_size(len(h))), None)
        for part in mail.attachments:
            if not decoded.take_size(part.encoded_size):
                continue
            attachments.append(fast_parse.attachment(part.mimetype, part.content, part))
    if text is not None and not text.strip() and html:
        text = None
    if text is None and html is not None:
        text = html_to_text(html, max_chars=limits.max_html_chars)
    if decoded.exceeded:
        limits_hit.append("decoded_size")
    return _assemble(
        header_message,
        headers,
        defects,
        own_address=own_address,
        limits=limits,
        bodies=(text, html),
        attachments=attachments,
        repaired=block.repaired,
        limits_hit=limits_hit,
    )


_CHARSET_SCAN_BYTES = 64 * 1024
_TEXT_TYPE = re.compile(
    rb"^content-type:[ \t]*text/[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*", re.IGNORECASE | re.MULTILINE
)
_CHARSET = re.compile(rb"charset[ \t]*=[ \t]*\"?([\w.:-]{1,40})", re.IGNORECASE)


def _first_text_charset_in(body: bytes) -> str | None:
    """The charset of the first text part that declares one, in the start of a body."""
    for text_type in _TEXT_TYPE.finditer(body):
        found = _CHARSET.search(text_type.group(0))
        if found:
            return found.group(1).decode("ascii")
    return None


def _parse_bounded(block: HeaderBlock, limits: ParseLimits, limits_hit: list[str]) -> Message:
    """The stdlib parse of the block's bytes, cut so that parts and depth stay in bounds."""
    source = block.message
    delimiters = _delimiter_lines(source, block.body_start, limits.max_parts + 1)
    if len(delimiters) > limits.max_parts:
        source = source[: delimiters[limits.max_parts]]
        limits_hit.append("parts")
    if len(delimiters) > limits.max_depth and _deeper_than(source, limits.max_depth):
        source = source[: delimiters[limits.max_depth]]
        limits_hit.append("depth")
    try:
        return _PARSER.parsebytes(source)
    except RecursionError:
        if len(delimiters) <= limits.max_depth:
            raise UnparseableEmail("MIME parser failed: RecursionError") from None
        limits_hit.append("depth")
        source = source[: delimiters[limits.max_depth]]
    except Exception as exc:  # the stdlib parser is lenient; anything here is exotic
        raise UnparseableEmail(f"MIME parser failed: {type(exc).__name__}: {exc}") from exc
    try:
        return _PARSER.parsebytes(source)
    except Exception as exc:
        raise UnparseableEmail(f"MIME parser failed: {type(exc).__name__}: {exc}") from exc


def _delimiter_lines(source: bytes, body_start: int, most: int) -> list[int]:
    """Offsets of the body's lines that start with ``--`` (MIME delimiters), at most ``most``."""
    found: list[int] = []
    if source.startswith(b"--", body_start):
        found.append(body_start)
    pos = body_start
    while len(found) < most:
        pos = source.find(b"\n--", pos)
        if pos < 0:
            break
        pos += 1
        found.append(pos)
    return found


def _deeper_than(source: bytes, max_depth: int) -> bool:
    """Whether the MIME tree nests deeper than ``max_depth`` (read by the Rust parser, which
    is linear in the input and refuses nesting past 256 levels)."""
    try:
        root = fast_mail_parser.parse_email_tree(source, mode="metadata")
    except fast_mail_parser.MimeStructureError:
        return True
    except fast_mail_parser.ParseError:
        return False  # the stdlib parse decides; a RecursionError there is handled
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in node.children)
    return False


class _DecodedBudget:
    """Bytes left to decode for bodies and attachments."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.exceeded = False

    def take(self, part: Message) -> bool:
        """Whether ``part`` may be decoded (its encoded size is within what is left)."""
        try:
            payload = part.get_payload()
        except ValueError:  # compat32 decodes 8-bit payloads with the charset: "utf-16\0"
            payload = part.get_payload(decode=True)
        return self.take_size(len(payload) if isinstance(payload, (str, bytes)) else 0)

    def take_size(self, size: int) -> bool:
        if size > self.left:
            self.exceeded = True
            return False
        self.left -= size
        return True


# --- headers ------------------------------------------------------------------------------------


class _HeaderReader:
    """Header fields of the top-level message, raw 8-bit bytes decoded and recorded."""

    def __init__(
        self,
        message: Message,
        defects: list[str],
        limits: ParseLimits,
        *,
        declared: str | None = None,
    ) -> None:
        self._message = message
        self._defects = defects
        self._limits = limits
        self._declared = declared
        self._declared_read = declared is not None
        self.undecoded: list[UndecodedHeader] = []

    def raw_text(self, name: str) -> str | None:
        for key, value in self._message.raw_items():
            if key.lower() == name:
                return str(value)
        return None

    def _decoded(self, name: str) -> tuple[str, bool] | None:
        """The raw value with its 8-bit bytes decoded, and whether it had any."""
        raw = self.raw_text(name)
        if raw is None:
            return None
        text, record = decode_header_value(name, raw, self._declared_charset())
        if record is None:
            return raw, False
        if all(seen.name != record.name for seen in self.undecoded):
            self.undecoded.append(record)
        return _UNFOLD.sub("", text), True

    def text(self, name: str) -> str | None:
        """A header's decoded value on one line; one that cannot be decoded is its raw text."""
        found = self._decoded(name)
        return None if found is None else _header_text(name, found[0], self._defects)

    def addresses(self, name: str) -> list[Address]:
        found = self._decoded(name)
        if found is None:
            return []
        raw = found[0]
        try:
            header: Any = policy.default.header_factory(name, _UNFOLD.sub("", raw))
            parsed: tuple[HeaderAddress, ...] = header.addresses
            pairs = [(a.display_name, a.addr_spec) for a in parsed]
        except Exception as exc:
            self._defects.append(f"{name}: {type(exc).__name__}")
            pairs = getaddresses([raw])
        return [a for a in (address(n, s) for n, s in pairs) if a is not None]

    def _declared_charset(self) -> str | None:
        """The charset declared by the message's first text part (read once, when needed)."""
        if not self._declared_read:
            self._declared_read = True
            self._declared = _first_text_charset(self._message, self._limits)
        return self._declared


def _first_text_charset(message: Message, limits: ParseLimits) -> str | None:
    stack: list[tuple[Message, int]] = [(message, 0)]
    seen = 0
    while stack and seen < limits.max_parts:
        part, depth = stack.pop()
        seen += 1
        if part.get_content_maintype() == "text":
            charset = part.get_content_charset()
            if charset:
                return charset
            continue
        if depth < limits.max_depth:
            stack.extend((c, depth + 1) for c in reversed(subparts(part)))
    return None


def _header(message: Message, name: str, defects: list[str]) -> str | None:
    """A header's decoded value on one line (for sub-parts; no 8-bit guessing)."""
    for key, raw in message.raw_items():
        if key.lower() == name:
            return _header_text(name, str(raw), defects)
    return None


def _header_text(name: str, raw: str, defects: list[str]) -> str | None:
    """RFC 2047 decoded text of a raw header value, on one line; its raw text if that fails."""
    try:
        value = str(policy.default.header_factory(name, _UNFOLD.sub("", raw)))
    except Exception as exc:
        defects.append(f"{name}: {type(exc).__name__}")
        value = raw
    return one_line(value) or None


# --- bodies and attachments ---------------------------------------------------------------------


def _joined_text(parts: list[Message], defects: list[str], decoded: _DecodedBudget) -> str | None:
    if not parts:
        return None
    texts = [_text(part, defects) for part in parts if decoded.take(part)]
    if not texts:
        return None
    joined = texts[0]
    for more in texts[1:]:
        joined += more if joined.endswith("\n") else "\n" + more
    return joined


def _text(part: Message, defects: list[str]) -> str:
    """Decode a text part; an unknown or wrong charset falls back to replacement characters."""
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else str(payload or "").encode()
    charset = part.get_content_charset() or "us-ascii"
    if charset in {"us-ascii", "ascii"} and not data.isascii():
        # Undeclared 8-bit text (the default charset is US-ASCII): read it as header bytes are.
        defects.append("8-bit text without a declared charset")
        return decode_8bit(data, None)[0]
    try:
        return data.decode(charset)
    except LookupError:
        defects.append(f"unknown charset {charset!r}")
        return data.decode("utf-8", errors="replace")
    except UnicodeDecodeError:
        defects.append(f"bytes not in charset {charset!r}")
        return data.decode(charset, errors="replace")
    except ValueError:  # a charset name Python rejects outright (e.g. with a NUL in it)
        defects.append(f"unusable charset {charset!r}")
        return data.decode("utf-8", errors="replace")


def _attachments(  # noqa: PLR0917 (private; each argument is a different bound)
    message: Message,
    body_ids: set[int],
    defects: list[str],
    limits: ParseLimits,
    budget: Budget,
    decoded: _DecodedBudget,
) -> list[AttachmentPart]:
    found: list[AttachmentPart] = []
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        if budget.stop_now():
            defects.append("time budget spent: remaining parts not read")
            break
        part, depth = stack.pop()
        content_type = part.get_content_type()
        if part.is_multipart() and content_type != "message/rfc822":
            if depth >= limits.max_depth:
                defects.append("mime: nesting deeper than the limit not read")
                continue
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(
                    (child, depth + 1) for child in reversed(payload) if isinstance(child, Message)
                )
            continue
        if id(part) in body_ids:
            continue
        if content_type != "message/rfc822" and not decoded.take(part):
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
        if filename and "\ufffd" in filename:  # compat32 replaced raw 8-bit bytes: re-read them
            filename = _raw_filename(part) or filename
        if filename and "=?" in filename:  # RFC 2047 in a parameter: common, though not allowed
            filename = str(make_header(decode_header(filename)))
    except Exception as exc:
        defects.append(f"filename: {type(exc).__name__}")
        filename = None
    disposition = part.get_content_disposition()
    content_id = message_id(_header(part, "content-id", defects))
    return AttachmentPart(
        content_type=content_type,
        content=content,
        filename=(one_line(filename) or None) if filename else None,
        inline=disposition == "inline" or (disposition is None and content_id is not None),
        content_id=content_id.strip("<>") if content_id else None,
    )


_FILENAME = re.compile(
    r'\b(?:file)?name[ \t]*=[ \t]*(?:"([^"]{1,1000})"|([^;\s]{1,1000}))', re.IGNORECASE
)


def _raw_filename(part: Message) -> str | None:
    """A file name sent as raw 8-bit bytes, read as header bytes are (see header_text)."""
    for field in ("content-disposition", "content-type"):
        for key, value in part.raw_items():
            found = _FILENAME.search(str(value)) if key.lower() == field else None
            if found and has_raw_bytes(name := found.group(1) or found.group(2)):
                return decode_8bit(raw_bytes(name), None)[0]
    return None


def _embedded_message_bytes(part: Message, defects: list[str]) -> bytes:
    inner = next(iter(subparts(part)), None)
    if inner is not None:
        try:
            return inner.as_bytes(policy=policy.compat32.clone(linesep="\r\n"))
        except Exception as exc:
            defects.append(f"message/rfc822: {type(exc).__name__}")
            return b""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


# --- flags --------------------------------------------------------------------------------------


def _flags(
    message: Message,
    headers: _HeaderReader,
    from_: Address | None,
    own_address: str | None,
    defects: list[str],
    *,
    repaired: bool,
    limits_hit: tuple[str, ...],
) -> EmailFlags:
    bounce, bounced_id, recipients = _bounce(message, headers, defects)
    return EmailFlags(
        auto_reply=is_auto_reply(headers.text),
        bounce=bounce,
        bounced_message_id=bounced_id,
        bounced_recipients=recipients,
        loop=is_loop(
            loop_header=headers.text(LOOP_HEADER.lower()), from_=from_, own_address=own_address
        ),
        headers_repaired=repaired,
        parse_limits=list(limits_hit),
    )


def _bounce(
    message: Message, headers: _HeaderReader, defects: list[str]
) -> tuple[bool, str | None, list[str]]:
    failed_header = headers.text("x-failed-recipients")
    header_recipients = [a.strip() for a in (failed_header or "").split(",") if a.strip()]
    is_report = (
        message.get_content_type() == "multipart/report"
        and str(message.get_param("report-type", "")).lower() == "delivery-status"
    )
    if not is_report:
        return bool(header_recipients), None, header_recipients
    recipients: list[str] = []
    bounced_id: str | None = None
    for part in subparts(message):
        content_type = part.get_content_type()
        if content_type == "message/delivery-status":
            recipients.extend(_failed_recipients(part))
        elif content_type in {"message/rfc822", "text/rfc822-headers"} and bounced_id is None:
            bounced_id = _returned_message_id(part, defects)
    return True, bounced_id, list(dict.fromkeys(recipients or header_recipients))


def _failed_recipients(part: Message) -> list[str]:
    """Recipients of per-recipient blocks whose Action is failed (or missing)."""
    recipients: list[str] = []
    for block in subparts(part)[1:]:  # the first block is per-message
        action = str(block.get("action", "failed")).strip().lower()
        recipient = block.get("final-recipient") or block.get("original-recipient")
        if recipient and action == "failed":
            found = str(recipient).split(";", 1)[-1].strip()
            if found:
                recipients.append(one_line(found))
    return recipients


def _returned_message_id(part: Message, defects: list[str]) -> str | None:
    inner = subparts(part)
    if inner:
        return message_id(_header(inner[0], "message-id", defects))
    text = part.get_payload(decode=True)
    if isinstance(text, bytes):
        headers = HeaderParser(policy=policy.default).parsestr(
            text.decode("utf-8", errors="replace")
        )
        return message_id(_header(headers, "message-id", defects))
    return None
