"""The header block of raw mail: found behind junk lines, bounded, and given back clean.

Gateways and mail stores put lines before the header fields (an mbox ``From `` line, blank
lines, a stray text line); the stdlib parser then sees no header at all. This module finds
the first header field within :attr:`ParseLimits.max_junk_lines` lines, skips what came
before it (``repaired``), cuts fields and the block to their bounds, and rebuilds the bytes
the parser reads. Only bytes with no header field at all near the start are not an email.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.parse_limits import ParseLimits

FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]{1,200}[ \t]*:")
"""A header field's name and colon (obsolete syntax allows blanks before the colon)."""
_BLANK_BEFORE_COLON = re.compile(rb"[\x21-\x39\x3b-\x7e]{1,200}[ \t]+:")


@dataclass(frozen=True)
class HeaderBlock:
    """The bytes to parse (headers, one blank line, body) and what was repaired on the way."""

    message: bytes
    body_start: int
    repaired: bool
    limits_hit: tuple[str, ...]


def _is_blank(line: bytes) -> bool:
    return line in {b"", b"\r"}


def _lines(raw: bytes, start: int) -> tuple[int, int, int]:
    """(start, end without the line break, start of the next line) of the line at ``start``."""
    end = raw.find(b"\n", start)
    if end < 0:
        return start, len(raw), len(raw)
    return start, end, end + 1


def find_first_field(raw: bytes, limits: ParseLimits) -> tuple[int, bool] | None:
    """Offset of the first header field and whether junk was skipped; None if there is none."""
    pos = 0
    for skipped in range(limits.max_junk_lines + 1):
        if pos >= len(raw) or pos > limits.max_junk_bytes:
            return None
        start, end, following = _lines(raw, pos)
        if FIELD.match(raw, start, end):
            return start, skipped > 0
        if raw[start : start + 1] in {b" ", b"\t"}:
            stripped = start
            while stripped < end and raw[stripped : stripped + 1] in {b" ", b"\t"}:
                stripped += 1
            if FIELD.match(raw, stripped, end):
                return stripped, True
        pos = following
    return None


def split_header_block(raw: bytes, limits: ParseLimits) -> HeaderBlock | None:
    """The message rebuilt with a clean, bounded header block; None without any header field."""
    found = find_first_field(raw, limits)
    if found is None:
        return None
    pos, repaired = found
    collector = _Collector(raw, limits)
    body_start = len(raw)
    while pos < len(raw):
        start, end, following = _lines(raw, pos)
        if end - start <= 1 and _is_blank(raw[start:end]):
            body_start = following
            break
        if raw[start : start + 1] in {b" ", b"\t"}:
            collector.continuation(start, following)
        elif FIELD.match(raw, start, end):
            collector.field(start, end, following)
        else:
            body_start = start  # a line that is no header ends the block (as the stdlib reads it)
            break
        pos = following
    header = b"".join(_terminated(field) for field in collector.fields)
    repaired = repaired or collector.repaired
    limits_hit = tuple(collector.limits_hit)
    if not repaired and not limits_hit and raw.startswith(header):
        # Nothing changed: parse the original bytes (no copy of a large body).
        return HeaderBlock(raw, body_start, repaired=False, limits_hit=())
    message = header + b"\r\n" + raw[body_start:]
    return HeaderBlock(message, len(header) + 2, repaired=True, limits_hit=limits_hit)


class _Collector:
    """Header fields as they are read, within the count and size bounds."""

    def __init__(self, raw: bytes, limits: ParseLimits) -> None:
        self._raw = raw
        self._limits = limits
        self.fields: list[bytes] = []
        self.limits_hit: list[str] = []
        self.repaired = False
        self._total = 0
        self._dropping = False

    def field(self, start: int, end: int, following: int) -> None:
        if len(self.fields) >= self._limits.max_header_fields:
            self._hit("header_count")
            self._dropping = True
            return
        if self._total >= self._limits.max_header_bytes:
            self._hit("header_size")
            self._dropping = True
            return
        self._dropping = False
        if _BLANK_BEFORE_COLON.match(self._raw, start, end):
            # "Name :" (obsolete syntax) is no field to the stdlib: write "Name:".
            colon = self._raw.index(b":", start)
            self.fields.append(self._raw[start:colon].rstrip(b" \t"))
            self.repaired = True
            start = colon
        else:
            self.fields.append(b"")
        self._append(start, following)

    def continuation(self, start: int, following: int) -> None:
        if not self._dropping and self.fields:
            self._append(start, following)

    def _append(self, start: int, following: int) -> None:
        room = self._limits.max_header_field_bytes - len(self.fields[-1])
        if following - start > room:
            self._hit("header_size")
            line = self._raw[start : start + room].rstrip(b"\r\n") + b"\r\n" if room > 0 else b""
        else:
            line = self._raw[start:following]
        self.fields[-1] += line
        self._total += len(line)

    def _hit(self, name: str) -> None:
        if name not in self.limits_hit:
            self.limits_hit.append(name)


def _terminated(field: bytes) -> bytes:
    return field if field.endswith(b"\n") else field + b"\r\n"
