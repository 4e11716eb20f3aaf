"""The status indicator of a channel — pure: the channel and its health reports in, one state out.

Active means *validated and working*: the channel is enabled, and every configured direction
(inbound, outbound) has a successful report — from Validate, the fetcher or the sender —
made after its settings last changed, and none failing. Otherwise it is Inactive, with the
reason:

- ``disabled``: the channel is switched off;
- failing: the most recent failure since the settings changed (reason, step, direction, time);
- not validated yet: a configured direction has no report about the current settings.

Reports older than ``settings_changed_at`` describe the previous host, user or password and
are ignored: a channel whose server was just changed is not Active until it is proven again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from config_api.schemas import StatusOut
from email_channels.events import ChannelState

if TYPE_CHECKING:
    from email_channels.events import ChannelConfig, ChannelStatus

DISABLED = "disabled"
NO_SETTINGS = "no inbound or outbound settings"
NOT_VALIDATED = (
    "not validated yet: run Validate, or wait for the fetcher/sender to connect with the "
    "current settings"
)

Direction = Literal["inbound", "outbound"]


def channel_status(
    channel: ChannelConfig, reports: dict[Direction, ChannelStatus | None]
) -> StatusOut:
    """The indicator the list and the detail view show."""
    if not channel.enabled:
        return StatusOut(state=ChannelState.INACTIVE, reason=DISABLED)
    configured: list[Direction] = [
        d for d in ("inbound", "outbound") if getattr(channel, d) is not None
    ]
    if not configured:
        return StatusOut(state=ChannelState.INACTIVE, reason=NO_SETTINGS)
    since = channel.settings_changed_at
    current = {
        d: report
        for d in configured
        if (report := reports.get(d)) is not None and (since is None or report.at >= since)
    }
    failing = [r for r in current.values() if r.state is ChannelState.INACTIVE]
    if failing:
        latest = max(failing, key=lambda r: r.at)
        return StatusOut(
            state=ChannelState.INACTIVE,
            reason=latest.reason or "failing",
            step=latest.step,
            direction=latest.direction,
            at=latest.at,
            last_success_at=latest.last_success_at,
        )
    missing = [d for d in configured if d not in current]
    if missing:
        return StatusOut(state=ChannelState.INACTIVE, reason=NOT_VALIDATED, direction=missing[0])
    latest = max(current.values(), key=lambda r: r.at)
    successes = [r.last_success_at or r.at for r in current.values()]
    return StatusOut(state=ChannelState.ACTIVE, at=latest.at, last_success_at=max(successes))
