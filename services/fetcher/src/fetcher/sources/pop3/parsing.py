"""Pure POP3 response parsing and cursor advance."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from fetcher.sources.pop3.errors import Pop3ProtocolError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from email_channels.events import FetchCursor, SourceIdentity

_UIDL_CHARS: Final = re.compile(r"^[\x21-\x7e]{1,70}$")  # RFC 1939 §7


def parse_uidl(block: bytes) -> dict[int, str]:
    """``UIDL`` lines ``n uid`` -> {n: uid} (pure)."""
    out: dict[int, str] = {}
    for line in block.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or not _UIDL_CHARS.match(parts[1]):  # noqa: PLR2004
            raise Pop3ProtocolError(f"bad UIDL line {line[:80]!r}")
        out[int(parts[0])] = parts[1]
    return out


def parse_list(block: bytes) -> dict[int, int]:
    """``LIST`` lines ``n size`` -> {n: size} (pure)."""
    out: dict[int, int] = {}
    for line in block.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():  # noqa: PLR2004
            out[int(parts[0])] = int(parts[1])
    return out


def advance_uidls(cursor: FetchCursor, messages: Sequence[SourceIdentity]) -> FetchCursor:
    """``cursor`` with the messages' UIDLs added (pure)."""
    seen = list(cursor.uidls or [])
    known = set(seen)
    for message in messages:
        if message.uidl is not None and message.uidl not in known:
            seen.append(message.uidl)
            known.add(message.uidl)
    return cursor.model_copy(update={"uidls": seen})
