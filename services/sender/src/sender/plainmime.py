"""Messages without attachments written straight to wire bytes, and the header-block check.

Why not the stdlib generator here: building an ``EmailMessage``, flattening it and parsing it
back cost about 1.7 ms of CPU per message, most of the sender's CPU, for the message shape
campaign services send most (text and/or html, no attachments). This writer produces the same
shape in a few tens of microseconds; :func:`sender.compose.compose` uses it when it applies and
the stdlib path (with its parse-back) otherwise: attachments, SMTPUTF8 addresses, an address or
header it cannot write (it answers ``None`` then, never a guess).

What it writes:

- header values that passed :func:`sender.headersafety.safe_header_text` (no raw CR/LF, no
  encoded word decoding to one); non-ASCII text as RFC 2047 ``B`` encoded words of whole
  characters; lines folded at spaces (78 columns where possible, never past 998);
- ``text/plain`` and/or ``text/html`` (``multipart/alternative`` when both), ``charset="utf-8"``,
  ``7bit`` when every line is printable ASCII of at most 998 bytes, else ``quoted-printable``;
- CRLF line ends throughout.

:func:`check_header_block` is the injection guarantee on the bytes themselves: every line of a
header block is either a continuation (starting with a space or tab) or one of the header
names we set, each exactly as often as we set it, and no line holds a bare CR or LF. It is
cheap enough to run on every message, and runs on every message this module writes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import secrets
from collections import Counter
from typing import TYPE_CHECKING

from sender.errors import MessageRejected

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from email.headerregistry import Address as HeaderAddress

MAX_LINE = 998
"""RFC 5322 2.1.1: a line is at most 998 characters, CRLF excluded."""
FOLD_AT = 78
_ATOM_PHRASE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*$")
"""A display name that can be written as it is: atext and spaces only."""
_7BIT = bytes([9, 10, *range(0x20, 0x7F)])
"""Bytes a 7bit body line may hold (tab, printable ASCII; LF separates lines)."""
_ENCODED_CHUNK = 45
"""UTF-8 bytes per encoded word: ``=?utf-8?b?`` + 60 base64 characters + ``?=`` = 72 <= 75."""


def write_plain(
    headers: Sequence[tuple[str, str]], *, text: str | None, html: str | None
) -> bytes | None:
    """The whole message as wire bytes, or None when this writer does not apply.

    ``headers`` are (name, value) in order, each value already safe and rendered (addresses
    through :func:`render_addresses`); MIME headers are added here.
    """
    block: list[str] = []
    for name, value in headers:
        field = fold(name, value)
        if field is None:
            return None
        block.append(field)
    block.append("MIME-Version: 1.0")
    names = [*(name for name, _ in headers), "MIME-Version", "Content-Type"]
    if text is not None and html is not None:
        plain, rich = _text_part(text, "plain"), _text_part(html, "html")
        boundary = _boundary(plain, rich)
        block.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        head = "\r\n".join(block).encode("ascii")
        check_header_block(head, names)
        marker = b"--" + boundary.encode("ascii")
        return b"".join(
            # the CRLF before a delimiter belongs to the delimiter, not to the part before it
            [
                head,
                b"\r\n\r\n",
                marker,
                b"\r\n",
                plain,
                b"\r\n",
                marker,
                b"\r\n",
                rich,
                b"\r\n",
                marker,
                b"--\r\n",
            ]
        )
    part = _text_part(text, "plain") if html is None else _text_part(html, "html")
    head, _, _ = part.partition(b"\r\n\r\n")  # the part's Content-* lines join the top block
    top = "\r\n".join(block).encode("ascii") + b"\r\n" + head
    check_header_block(top, [*names, "Content-Transfer-Encoding"])
    return b"".join([top, b"\r\n\r\n", part[len(head) + 4 :]])


def render_addresses(addresses: Iterable[HeaderAddress]) -> str | None:
    """``Name <local@domain>, ...`` for ASCII addresses; None for what only the stdlib writes."""
    rendered = []
    for address in addresses:
        spec = address.addr_spec
        if not spec.isascii() or '"' in spec or "\\" in spec:
            return None
        name = address.display_name
        if not name:
            rendered.append(spec)
        elif not name.isascii() or not _printable(name):
            rendered.append(f"{' '.join(encoded_words(name))} <{spec}>")
        elif _ATOM_PHRASE.match(name) and name.strip() == name and "  " not in name:
            rendered.append(f"{name} <{spec}>")
        else:
            quoted = name.replace("\\", "\\\\").replace('"', '\\"')
            rendered.append(f'"{quoted}" <{spec}>')
    return ", ".join(rendered)


def unstructured(value: str) -> str:
    """An unstructured header value (Subject): as it is when ASCII, else encoded words."""
    if value.isascii() and _printable(value):
        return value
    return " ".join(encoded_words(value))


def encoded_words(value: str) -> list[str]:
    """RFC 2047 ``B`` encoded words of whole UTF-8 characters, each at most 75 characters."""
    words: list[str] = []
    chunk = bytearray()
    for char in value:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > _ENCODED_CHUNK:
            words.append(_word(chunk))
            chunk = bytearray()
        chunk += data
    if chunk or not words:
        words.append(_word(chunk))
    return words


def _word(data: bytes | bytearray) -> str:
    return f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="


_PRINTABLE = re.compile(r"[\t -~]*")


def _printable(value: str) -> bool:
    """Printable ASCII and tabs only (one regular-expression match, not a loop per character)."""
    return _PRINTABLE.fullmatch(value) is not None


def fold(name: str, value: str) -> str | None:
    """``Name: value`` folded at spaces (CRLF + the space); None when a line stays too long."""
    first = f"{name}: {value}"
    if len(first) <= FOLD_AT:
        return first
    lines: list[str] = []
    line = f"{name}:"
    for index, token in enumerate(value.split(" ")):
        if index and token and len(line) + 1 + len(token) > FOLD_AT and line.strip(" \t"):
            lines.append(line)
            line = ""
        line = f"{line} {token}" if index or line else token
    lines.append(line)
    if any(len(line) > MAX_LINE for line in lines):
        return None
    return "\r\n".join(lines)


def _text_part(text: str | None, subtype: str) -> bytes:
    """Content-Type and Content-Transfer-Encoding lines, a blank line, the body (CRLF)."""
    lines = (text or "").encode("utf-8").splitlines()
    joined = b"\n".join(lines)
    if not joined.translate(None, _7BIT) and max(map(len, lines), default=0) <= MAX_LINE:
        cte, body = "7bit", b"\r\n".join(lines) + b"\r\n"
    else:
        cte = "quoted-printable"
        body = binascii.b2a_qp(joined + b"\n", istext=True).replace(b"\n", b"\r\n")
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
    )
    return head.encode("ascii") + body


def _boundary(*parts: bytes) -> str:
    while True:
        boundary = f"=_ec_{secrets.token_hex(16)}"
        if not any(boundary.encode("ascii") in part for part in parts):
            return boundary


@functools.lru_cache(maxsize=256)
def _expected(names: tuple[str, ...]) -> list[bytes]:
    """The header names a block must hold, as :func:`check_header_block` compares them (the
    same few header sets come back for every message)."""
    return sorted(name.lower().encode("ascii", "replace") for name in names)


_FOLDING = b" \t"
"""A line starting with one of these continues the header above it."""


def check_header_block(block: bytes, names: Sequence[str]) -> None:
    """Refuse a header block holding anything but the ``names`` we set (see the docstring)."""
    crlf = block.count(b"\r\n")
    if block.count(b"\r") != crlf or block.count(b"\n") != crlf:
        raise MessageRejected("a generated header line holds a bare CR or LF")
    lines = block.split(b"\r\n")
    if max(map(len, lines), default=0) > MAX_LINE:
        raise MessageRejected("a generated header line is too long")
    seen: list[bytes] = []
    for line in lines:
        if not line or line[0] in _FOLDING:
            continue
        name, colon, _ = line.partition(b":")
        if not colon:
            raise MessageRejected("a generated header line is not a header; refused as injection")
        seen.append(name.lower())
    if sorted(seen) != _expected(tuple(names)):
        seen_names = Counter(n.decode("ascii", "replace") for n in seen)
        wanted = Counter(name.lower() for name in names)
        grown = ", ".join(sorted((seen_names - wanted).elements())) or "none"
        lost = ", ".join(sorted((wanted - seen_names).elements())) or "none"
        raise MessageRejected(
            f"the message would carry headers that were never set ({grown}; lost: {lost}); "
            "refused as header injection"
        )
