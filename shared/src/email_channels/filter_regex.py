"""Filter regular expressions, bounded: RE2 (google-re2), a linear-time engine.

A filter's ``regex`` is typed by an administrator and run by the router on every message of
the channel. Python's ``re`` backtracks, so a pattern like ``(a+)+$`` can stall it for minutes
on a few dozen characters. RE2 matches in time linear in the text, whatever the pattern; it
refuses what needs backtracking (backreferences, look-around). config-api checks each pattern
here at save time (a 422 naming the field); the router compiles with the same function.

Limits: at most :data:`MAX_PATTERN_CHARS` characters and an RE2 program of at most
:data:`MAX_PROGRAM_SIZE` instructions (``a{1000}{1000}`` is short but huge), with
:data:`MAX_MEMORY_BYTES` of matcher memory.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final, Protocol

import re2

MAX_PATTERN_CHARS: Final = 500
MAX_PROGRAM_SIZE: Final = 5000
MAX_MEMORY_BYTES: Final = 8 << 20


class FilterPattern(Protocol):
    """What the router needs of a compiled pattern."""

    def search(self, text: str) -> object | None: ...


class FilterRegexError(ValueError):
    """The pattern is refused; the message says why in words an administrator can act on."""


def _options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # the error comes back as an exception, not a stderr line
    options.max_mem = MAX_MEMORY_BYTES
    return options


@lru_cache(maxsize=1024)
def compile_filter_regex(pattern: str) -> FilterPattern:
    """The compiled case-insensitive pattern, or :class:`FilterRegexError` saying why not."""
    if len(pattern) > MAX_PATTERN_CHARS:
        msg = f"is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS} are allowed"
        raise FilterRegexError(msg)
    try:
        compiled: FilterPattern = re2.compile(pattern, _options())
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        msg = (
            f"is not a valid RE2 regular expression ({detail}); backreferences and "
            "look-around are not supported"
        )
        raise FilterRegexError(msg) from None
    size: int = compiled.programsize  # type: ignore[attr-defined]
    if size > MAX_PROGRAM_SIZE:
        msg = (
            f"is too complex (program size {size}, at most "
            f"{MAX_PROGRAM_SIZE}); use fewer or smaller repetitions"
        )
        raise FilterRegexError(msg)
    return compiled
