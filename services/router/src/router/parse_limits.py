"""Bounds on parsing one message, so a hostile message costs bounded CPU and memory.

Every bound, when exceeded, is named in :attr:`ParsedEmail.limits_hit` (and in the routed
record's ``flags.parse_limits``): the message is still routed with what could be read within
the bounds, and the full raw MIME stays in the blob store. The bounds are applied *before*
the stdlib parser sees the bytes (header block cut, MIME structure cut at a delimiter line),
so the parser's own cost is bounded too; :class:`Budget` stops the part-by-part work that
follows once the time is spent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ParseLimits:
    """What one message may cost. Defaults fit real mail with a wide margin."""

    max_parts: int = 1_000
    """MIME delimiter lines read; the structure after the last one read is not parsed."""
    max_depth: int = 32
    """MIME nesting levels descended into."""
    max_header_fields: int = 1_000
    max_header_field_bytes: int = 64 * 1024
    """Longer fields are cut to this size."""
    max_header_bytes: int = 1024 * 1024
    max_junk_lines: int = 16
    """Lines (mbox ``From``, blank, stray text) skipped before the first header field."""
    max_junk_bytes: int = 64 * 1024
    max_decoded_bytes: int = 32 * 1024 * 1024
    """Bodies and attachments decoded in total; parts past it are not decoded."""
    max_stdlib_bytes: int = 8 * 1024 * 1024
    """Larger messages are not given to the stdlib parser (it holds ~10x the input while
    parsing: measured 530 MB for a 54 MB message): their MIME is read by the Rust parser
    with attachments decoded lazily, their header fields by ours (see ``parsing``)."""
    max_html_chars: int = 2_000_000
    """HTML converted to text at most (the rest is not read for matching)."""
    max_references: int = 200
    max_parse_s: float = 1.0
    """Time for the part-by-part work after the parse; parts left are not read."""


DEFAULT_LIMITS = ParseLimits()


class Budget:
    """A deadline on the monotonic clock; remembers whether work was stopped by it."""

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds
        self.stopped = False

    def stop_now(self) -> bool:
        """Whether the time is spent (then the caller stops, and ``stopped`` records it)."""
        if time.monotonic() > self._deadline:
            self.stopped = True
        return self.stopped
