"""Header fields for filters' header conditions, read from the raw MIME's header block.

Only done when a channel has a filter with header conditions. Bounded: at most
:data:`HEADER_BLOCK_LIMIT` bytes of the header block, :data:`VALUE_LIMIT` characters of each
value, and only the fields a condition names are decoded (RFC 2047 encoded words included).
The values are used for matching only, never written into a header.
"""

from __future__ import annotations

import re
from email import policy

HEADER_BLOCK_LIMIT = 256 * 1024
"""Bytes of the header block looked at; a longer block is cut (the rest is not matched)."""
VALUE_LIMIT = 16 * 1024
"""Characters of one header value matched."""

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)


def header_fields(mime: bytes, wanted: frozenset[str]) -> dict[str, list[str]]:
    """Lower-cased field name -> its decoded values, casefolded, for the ``wanted`` names."""
    head = mime[:HEADER_BLOCK_LIMIT]
    end = _BLANK_LINE.search(head)
    if end is not None:
        head = head[: end.start()]
    fields: dict[str, list[str]] = {}
    for match in _FIELD.finditer(head):
        name = match.group(1).decode("ascii").lower()
        if name not in wanted:
            continue
        value = match.group(2).decode("utf-8", errors="replace")
        value = re.sub(r"\r?\n[ \t]", " ", value).strip()[:VALUE_LIMIT]
        fields.setdefault(name, []).append(_decoded(name, value).casefold())
    return fields


def _decoded(name: str, value: str) -> str:
    """The value with encoded words decoded; the raw value when it does not decode."""
    try:
        return str(policy.default.header_factory(name, value))
    except Exception:
        return value
