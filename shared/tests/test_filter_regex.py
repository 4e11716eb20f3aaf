"""Filter regexes are compiled by a linear-time engine and bounded in size."""

from __future__ import annotations

import time

import pytest

from email_channels.filter_regex import MAX_PATTERN_CHARS, FilterRegexError, compile_filter_regex


def test_catastrophic_backtracking_pattern_runs_in_linear_time() -> None:
    """(a+)+$ on 50k 'a's plus a mismatch takes seconds-to-forever in `re`; RE2 is instant."""
    pattern = compile_filter_regex("(a+)+$")
    started = time.perf_counter()

    assert pattern.search("a" * 50_000 + "!") is None
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", "not a valid RE2"),
        ("(?=order)", "not a valid RE2"),
        ("((a{100}){100}){100}", "RE2"),
        ("x" * (MAX_PATTERN_CHARS + 1), "characters long"),
        ("(unclosed", "not a valid RE2"),
    ],
    ids=["backreference", "lookahead", "huge-repetition", "too-long", "syntax"],
)
def test_refused_patterns_say_why(pattern: str, reason: str) -> None:
    """Backreferences, look-around, huge programs and long patterns are refused with a reason."""
    with pytest.raises(FilterRegexError, match=reason):
        compile_filter_regex(pattern)


def test_matching_is_case_insensitive() -> None:
    """Filters match case-insensitively, like their keywords."""
    assert compile_filter_regex(r"order\s+#?\d+").search("Your ORDER #123") is not None
