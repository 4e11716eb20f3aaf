"""Channel search — pure: quick search by part of the name, advanced search by fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from config_api.schemas import StatusFilter
    from email_channels.events import ChannelConfig, ChannelState


@dataclass(frozen=True)
class ChannelQuery:
    """All given criteria must match; text criteria are case-insensitive substrings."""

    q: str | None = None
    name: str | None = None
    email_address: str | None = None
    default_campaign_id: str | None = None
    status: StatusFilter = "all"

    def matches(self, channel: ChannelConfig, state: ChannelState) -> bool:
        texts = (
            (self.q, channel.name),
            (self.name, channel.name),
            (self.email_address, channel.email_address or ""),
        )
        if any(
            wanted and wanted.strip().casefold() not in text.casefold() for wanted, text in texts
        ):
            return False
        if self.default_campaign_id and channel.default_campaign_id != self.default_campaign_id:
            return False
        if self.status == "all":
            return True
        return state.value == self.status


def select_channels(
    channels: Iterable[ChannelConfig],
    query: ChannelQuery,
    state_of: Callable[[ChannelConfig], ChannelState],
) -> list[ChannelConfig]:
    """The matching channels, by name (case-insensitive), then id."""
    found = [channel for channel in channels if query.matches(channel, state_of(channel))]
    return sorted(found, key=lambda channel: (channel.name.casefold(), channel.id))
