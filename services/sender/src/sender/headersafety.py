"""Header injection: refuse a value that would become a header break, check what we generated.

Two layers, because one is not enough on the Python this project runs (3.11.7):

1. :func:`safe_header_text` refuses, per field, a value holding a line break (CR, LF or any
   other character ``str.splitlines`` breaks on) **or an RFC 2047 encoded-word that decodes to
   one** (``=?UTF-8?Q?hi=0D=0ABcc:_x@evil.example?=``, B encoding likewise). The stdlib email
   generator of 3.11.7 decodes such a word while folding and writes the CR/LF as a real header
   break (CVE-2024-6923 is fixed only in later patch releases), so the decoded value is never
   trusted.
2. :func:`flatten_checked` writes the message to bytes and parses them back: every part must
   carry exactly the header names we set on it, in the same number. An extra ``Bcc:`` line,
   whatever produced it, refuses the message before a byte reaches the server.

Both raise :class:`~sender.errors.MessageRejected` naming the field, so the campaign service
gets a ``rejected`` delivery event with the reason.
"""

from __future__ import annotations

import re
from collections import Counter
from email import errors as email_errors
from email import policy as email_policy
from email.generator import BytesGenerator
from email.header import decode_header
from email.parser import BytesParser
from io import BytesIO
from typing import TYPE_CHECKING

from sender.errors import MessageRejected

if TYPE_CHECKING:
    from email.message import EmailMessage, Message

_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[QqBb]\?[^?\s]*\?=")

SEVEN_BIT = email_policy.default.clone(cte_type="7bit")
"""Policy of the messages we build: bodies 7-bit clean (no 8BITMIME needed)."""
_WIRE = email_policy.SMTP.clone(cte_type="7bit")
_WIRE_UTF8 = email_policy.SMTPUTF8.clone(cte_type="7bit")


def _breaks_line(text: str) -> bool:
    return len(f"x{text}x".splitlines()) > 1 or "\x00" in text


def safe_header_text(value: str, field: str) -> str:
    """``value`` unchanged, or MessageRejected when it (or a word it encodes) breaks a line."""
    if _breaks_line(value):
        raise MessageRejected(f"{field}: a header value must not contain CR, LF or NUL")
    for word in _ENCODED_WORD.findall(value):
        if _breaks_line(_decoded(word)):
            raise MessageRejected(
                f"{field}: an encoded word ({word[:40]!r}) decodes to a line break; refused as "
                "header injection"
            )
    return value


def _decoded(word: str) -> str:
    try:
        chunks = decode_header(word)
    except (ValueError, email_errors.HeaderParseError, LookupError):
        return ""  # not decodable: written as the literal text it is, which breaks no line
    text = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            text.append(chunk.decode(_charset(charset), errors="replace"))
        else:
            text.append(chunk)
    return "".join(text)


def _charset(charset: str | None) -> str:
    import codecs  # noqa: PLC0415 - only for the rare unknown charset

    try:
        codecs.lookup(charset or "ascii")
    except LookupError:
        return "latin-1"
    return charset or "ascii"


def flatten_checked(message: EmailMessage, *, utf8: bool = False) -> bytes:
    """The message as sent on the wire (CRLF), after checking it parses back to the same headers.

    ``utf8`` writes non-ASCII headers raw (SMTPUTF8 sessions) instead of encoded words.
    """
    policy = _WIRE_UTF8 if utf8 else _WIRE
    buffer = BytesIO()
    BytesGenerator(buffer, policy=policy).flatten(message)
    data = buffer.getvalue()
    parsed = BytesParser(policy=email_policy.compat32).parsebytes(data)
    written = list(message.walk())
    read = list(parsed.walk())
    if len(written) != len(read):
        raise MessageRejected(
            "the generated message does not parse back to the same MIME structure; refused as "
            "header injection"
        )
    for index, (ours, theirs) in enumerate(zip(written, read, strict=True)):
        extra = _names(theirs) - _names(ours)
        missing = _names(ours) - _names(theirs)
        if extra or missing:
            where = "the message" if index == 0 else f"MIME part {index}"
            grown = ", ".join(sorted(extra)) or "none"
            lost = ", ".join(sorted(missing)) or "none"
            raise MessageRejected(
                f"{where} would carry headers that were never set ({grown}; lost: {lost}); "
                "refused as header injection"
            )
    return data


def _names(part: Message) -> Counter[str]:
    return Counter(name.lower() for name in part.keys())  # noqa: SIM118 - Message is no dict
