""" "Test this message": which filter the router would pick for a sample, and why.

Runs the router's own pure rules (``router.rules``: :func:`~router.rules.route` decides,
:func:`~router.rules.matches` explains each filter tried) on a message built from the sample's
header fields and body and parsed by the router's own parser, so what this answers is what
the router does.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP
from typing import TYPE_CHECKING

from config_api.errors import InvalidInput, Problem
from config_api.schemas import FilterCheck, RoutingTestResult
from router.parsing import parse_email
from router.rules import MatchText, Unroutable, matches, route

if TYPE_CHECKING:
    from collections.abc import Callable

    from config_api.schemas import SampleMessage
    from email_channels.events import Campaign, ChannelConfig, ChannelFilters

_CONTENT_HEADERS = frozenset({"content-type", "content-transfer-encoding", "mime-version"})


def sample_mime(sample: SampleMessage) -> bytes:
    """The sample as a MIME message (its body as text/plain UTF-8)."""
    message = EmailMessage(policy=SMTP)
    message.set_content(sample.body)
    for index, header in enumerate(sample.headers):
        if header.name.lower() in _CONTENT_HEADERS:
            continue  # the body is always sent as text here
        try:
            message[header.name] = header.value
        except (ValueError, TypeError) as exc:
            raise InvalidInput(
                Problem(("body", "headers", index, "value"), f"not a usable header value: {exc}")
            ) from None
    return message.as_bytes()


def explain(
    sample: SampleMessage,
    channel: ChannelConfig,
    filters: ChannelFilters | None,
    *,
    campaign_of: Callable[[str], Campaign | None],
) -> RoutingTestResult:
    parsed = parse_email(sample_mime(sample), own_address=channel.email_address)
    text = MatchText.of(parsed)
    rules = list(filters.filters) if filters else []
    checked: list[FilterCheck] = []
    for position, rule in enumerate(rules):
        hit = matches(rule, text)
        checked.append(
            FilterCheck(position=position, filter_id=rule.id, name=rule.name, matched=hit)
        )
        if hit:
            break
    try:
        decision = route(parsed, filters, channel)
    except Unroutable:
        return RoutingTestResult(
            campaign_id=None,
            campaign_name=None,
            reason="unroutable",
            explanation=(
                f"no filter matched ({len(checked)} tried) and the channel has no default "
                "campaign: the router would dead-letter this message"
            ),
            checked=checked,
        )
    campaign = campaign_of(decision.campaign_id)
    name = campaign.name if campaign else None
    if decision.reason.kind == "filter":
        rule = next(r for r in rules if r.id == decision.reason.filter_id)
        return RoutingTestResult(
            campaign_id=decision.campaign_id,
            campaign_name=name,
            reason="filter",
            filter_id=rule.id,
            filter_name=rule.name,
            explanation=(
                f"filter {len(checked)} of {len(rules)} ({rule.name or rule.id!r}) "
                "matched first; filters after it were not tried"
            ),
            checked=checked,
        )
    return RoutingTestResult(
        campaign_id=decision.campaign_id,
        campaign_name=name,
        reason="default",
        explanation=(
            f"none of the {len(checked)} filter(s) matched: the channel's default campaign"
        ),
        checked=checked,
    )
