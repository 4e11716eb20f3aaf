"""Channel search: quick search by part of the name; advanced search by field."""

from __future__ import annotations

from config_api.search import ChannelQuery, select_channels
from email_channels.events import ChannelConfig, ChannelState

CHANNELS = [
    ChannelConfig(id="1", name="Support EU", email_address="eu@example.com"),
    ChannelConfig(id="2", name="sales", default_campaign_id="sales-campaign"),
    ChannelConfig(id="3", name="Support US", email_address="us@example.com"),
]
ACTIVE = {"3"}


def state_of(channel: ChannelConfig) -> ChannelState:
    return ChannelState.ACTIVE if channel.id in ACTIVE else ChannelState.INACTIVE


def names(query: ChannelQuery) -> list[str]:
    return [c.name for c in select_channels(CHANNELS, query, state_of)]


def test_quick_search_matches_part_of_the_name_case_insensitively() -> None:
    assert names(ChannelQuery(q="support")) == ["Support EU", "Support US"]
    assert names(ChannelQuery(q=" PORT u")) == ["Support US"]  # trimmed, then any position
    assert names(ChannelQuery(q="nothing")) == []


def test_no_criteria_lists_everything_by_name() -> None:
    assert names(ChannelQuery()) == ["sales", "Support EU", "Support US"]


def test_advanced_search_combines_criteria() -> None:
    assert names(ChannelQuery(default_campaign_id="sales-campaign")) == ["sales"]
    assert names(ChannelQuery(email_address="@example.com", q="eu")) == ["Support EU"]


def test_status_filter_selects_by_state() -> None:
    assert names(ChannelQuery(status="active")) == ["Support US"]
    assert names(ChannelQuery(status="inactive")) == ["sales", "Support EU"]
