"""Routing rules: (parsed email, the channel's filters, the channel) -> campaign and why.

Pure: no I/O and no Kafka. Semantics (design.md §2, "Filters"):

- Filters are tried in their order; the first that matches wins; none matches -> the
  channel's default campaign. No default campaign -> :class:`Unroutable` (dead-lettered).
- All matching is case-insensitive (``str.casefold``) substring matching.
- A filter's criteria, each applying only when it is given, must all hold:

  * *keywords* -- any keyword of ``sender_keywords`` found in the sender (display name and
    address), or of ``subject_keywords`` in the subject, or of ``body_keywords`` in the body
    (text body, else the html body's text). Fields without keywords are ignored.
  * ``all_of`` -- every word appears somewhere in sender, subject or body.
  * ``regex`` -- a case-insensitive search (RE2: linear time, whatever the pattern) finds it in
    the subject or the body. An invalid
    pattern never matches and is logged once.
  * ``header_conditions`` -- every condition holds: some value of the named header field
    (decoded, case-insensitive) contains one of its keywords. A message without the field
    does not satisfy the condition.

- A filter with no criteria at all (no keywords, no ``all_of``, no ``regex``, no header
  conditions) never matches, so an empty filter cannot swallow the channel's mail.
- Thread affinity (a reply to mail the product routed or sent) is decided before the filters,
  by the handler, from the router's table (:mod:`router.marks`); it is not a rule here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import structlog

from email_channels.errors import PermanentError
from email_channels.events import ChannelConfig, ChannelFilters, Filter, RoutingReason
from email_channels.filter_regex import FilterPattern, FilterRegexError, compile_filter_regex

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from router.parsing import ParsedEmail

log = structlog.get_logger(__name__)

REGEX_TEXT_LIMIT = 256 * 1024
"""Characters of subject/body a filter's regex is run on (bounds the cost of a bad pattern)."""


class Unroutable(PermanentError):
    """No filter matched and the channel has no default campaign."""


@dataclass(frozen=True)
class Decision:
    campaign_id: str
    reason: RoutingReason


@dataclass(frozen=True)
class MatchText:
    """The three fields filters look at: case-folded once for keywords, as-is for regexes."""

    sender: str
    subject: str
    body: str
    original_subject: str
    original_body: str
    headers: Mapping[str, list[str]] = field(default_factory=dict)
    """Lower-cased header name -> casefolded decoded values (only the names filters ask for)."""

    @classmethod
    def of(cls, email: ParsedEmail, headers: Mapping[str, list[str]] | None = None) -> MatchText:
        subject, body = email.subject or "", email.body_text
        return cls(
            sender=email.sender_text.casefold(),
            subject=subject.casefold(),
            body=body.casefold(),
            original_subject=subject[:REGEX_TEXT_LIMIT],
            original_body=body[:REGEX_TEXT_LIMIT],
            headers=headers or {},
        )


def wanted_headers(filters: ChannelFilters | None) -> frozenset[str]:
    """Lower-cased names of the header fields the channel's filters look at."""
    if filters is None:
        return frozenset()
    return frozenset(
        condition.header.lower() for rule in filters.filters for condition in rule.header_conditions
    )


def route(
    email: ParsedEmail,
    filters: ChannelFilters | None,
    channel: ChannelConfig,
    headers: Mapping[str, list[str]] | None = None,
) -> Decision:
    """Decide the campaign of ``email`` on ``channel``; ``headers`` holds the fields named by
    :func:`wanted_headers` (from :func:`router.header_fields.header_fields`)."""
    text = MatchText.of(email, headers)
    for rule in filters.filters if filters is not None else ():
        if matches(rule, text):
            return Decision(rule.campaign_id, RoutingReason(kind="filter", filter_id=rule.id))
    if channel.default_campaign_id is None:
        raise Unroutable(
            f"channel {channel.id} has no default campaign and no filter matched the message"
        )
    return Decision(channel.default_campaign_id, RoutingReason(kind="default"))


def matches(rule: Filter, text: MatchText) -> bool:
    """Whether one filter matches (see the module docstring for the semantics)."""
    has_keywords = bool(rule.sender_keywords or rule.subject_keywords or rule.body_keywords)
    if not (has_keywords or rule.all_of or rule.regex or rule.header_conditions):
        return False
    if has_keywords and not (
        _any_in(rule.sender_keywords, text.sender)
        or _any_in(rule.subject_keywords, text.subject)
        or _any_in(rule.body_keywords, text.body)
    ):
        return False
    if rule.all_of:
        everything = f"{text.sender}\n{text.subject}\n{text.body}"
        if not all(word.casefold() in everything for word in rule.all_of if word):
            return False
    if rule.regex:
        pattern = _compiled(rule.regex)
        if pattern is None:
            return False
        if not (pattern.search(text.original_subject) or pattern.search(text.original_body)):
            return False
    return all(
        any(
            _any_in(condition.keywords, value)
            for value in text.headers.get(condition.header.lower(), ())
        )
        for condition in rule.header_conditions
    )


def _any_in(keywords: Iterable[str], haystack: str) -> bool:
    return any(keyword and keyword.casefold() in haystack for keyword in keywords)


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> FilterPattern | None:
    """The compiled pattern (RE2, linear time: the same check config-api runs at save time), or
    None for a pattern refused there (logged once per pattern: the cache remembers it)."""
    try:
        return compile_filter_regex(pattern)
    except FilterRegexError as exc:
        log.warning("invalid filter regex never matches", regex=pattern, error=str(exc))
        return None
