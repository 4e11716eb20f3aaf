"""Header text from raw 8-bit bytes that were sent without RFC 2047 encoding.

Many clients (and gateways) write a subject or a display name as raw bytes in the charset of
the message body. The stdlib parser keeps such bytes as surrogates; this module turns them
into text, trying in order:

1. UTF-8 (valid UTF-8 of some length is almost never accidental, and it is what modern
   clients send; trying a declared single-byte charset first would turn every UTF-8 subject
   of a Latin-1 body into mojibake, since Latin-1 decodes anything);
2. the charset declared by the message's first text part;
3. UTF-8 with replacement characters when it is *mostly* UTF-8 (more well-formed multi-byte
   sequences than broken bytes: a truncated or damaged UTF-8 subject);
4. charset-normalizer's best guess;
5. Latin-1, which never fails.

The caller records the charset used and the hash of the undecoded bytes
(:class:`~email_channels.events.UndecodedHeader`), so a guessed text is never silent.
"""

from __future__ import annotations

import codecs
import hashlib
import re

from charset_normalizer import from_bytes

from email_channels.events import UndecodedHeader

_FIRST_8BIT = 0x80
_Q_WORD = re.compile(rb"=\?([!-~]{1,64}?)\?([qQ])\?([^?\s]*)\?=")
_MULTIBYTE = frozenset(
    {"gb2312", "gbk", "gb18030", "big5", "big5hkscs", "shift_jis", "cp932", "euc_jp",
     "euc_jis_2004", "euc_kr", "cp949", "iso2022_jp", "iso2022_kr", "cp950", "johab"}
)  # fmt: skip
"""Detector results we trust on a short header: multi-byte encodings have structure a guess
must match. For single-byte encodings a header is too short to tell them apart (measured: a
German Latin-1 subject detected as cp1256), so those fall through to Latin-1."""


def has_raw_bytes(value: str) -> bool:
    """Whether a header value read by the bytes parser holds undecoded 8-bit bytes."""
    return not value.isascii() and any("\udc80" <= char <= "\udcff" for char in value)


def raw_bytes(value: str) -> bytes:
    """The original bytes of a value the bytes parser decoded as ASCII + surrogateescape."""
    return value.encode("utf-8", "surrogateescape")


def decode_8bit(data: bytes, declared: str | None) -> tuple[str, str]:
    """(text, charset used) for raw header bytes; see the module docstring for the order."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if declared:
        try:
            codec = codecs.lookup(declared).name
            return data.decode(codec), codec
        except (LookupError, ValueError):  # ValueError: UnicodeDecodeError, NUL in the name
            pass
    lenient = data.decode("utf-8", errors="replace")
    broken = lenient.count("\ufffd")
    if sum(1 for char in lenient if not char.isascii()) - broken > broken:
        return lenient, "utf-8"
    best = from_bytes(data).best()
    if best is not None and codecs.lookup(best.encoding).name in _MULTIBYTE:
        return str(best), best.encoding
    return data.decode("latin-1"), "latin-1"


def escape_in_encoded_words(data: bytes) -> tuple[bytes, str | None]:
    """Raw 8-bit bytes inside Q encoded-words written as ``=XX`` (their charset is the word's).

    Outlook writes ``=?iso-8859-1?Q?Fr\xf6sche?=``: the word names the charset of the raw
    byte. Returns the bytes and the charset of the first word that needed it.
    """
    charset: str | None = None

    def escape(match: re.Match[bytes]) -> bytes:
        nonlocal charset
        text = match.group(3)
        if text.isascii():
            return match.group(0)
        charset = charset or match.group(1).decode("ascii").split("*")[0]
        escaped = b"".join(
            b"=%02X" % byte if byte >= _FIRST_8BIT else bytes([byte]) for byte in text
        )
        return b"=?" + match.group(1) + b"?" + match.group(2) + b"?" + escaped + b"?="

    return _Q_WORD.sub(escape, data), charset


def decode_header_value(
    name: str, value: str, declared: str | None
) -> tuple[str, UndecodedHeader | None]:
    """A header value with its raw 8-bit bytes decoded, and the record of what was guessed."""
    if not has_raw_bytes(value):
        return value, None
    data = raw_bytes(value)
    escaped, word_charset = escape_in_encoded_words(data)
    if word_charset is not None and escaped.isascii():
        text, charset = escaped.decode("ascii"), word_charset
    else:
        text, charset = decode_8bit(escaped, declared)
    return text, UndecodedHeader(
        name=name.lower(), charset=charset, sha256=hashlib.sha256(data).hexdigest()
    )
