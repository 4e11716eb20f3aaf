"""The status indicator: Active only for an enabled channel proven to work with its current
settings; otherwise Inactive with the reason (disabled / failing with step / not validated)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from config_api.status import DISABLED, NOT_VALIDATED, channel_status
from email_channels.events import (
    ChannelConfig,
    ChannelState,
    ChannelStatus,
    ImapInbound,
    SmtpOutbound,
)
from email_channels.secretbox import SecretBox

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SECRET = SecretBox.from_env(f"k1:{SecretBox.generate_key()}").encrypt("pw")


def channel(**changes: Any) -> ChannelConfig:
    values: dict[str, Any] = {
        "id": "c1",
        "name": "Support",
        "default_campaign_id": "support",
        "enabled": True,
        "inbound": ImapInbound(host="imap.example.com", port=993, username="u", password=SECRET),
        "outbound": SmtpOutbound(host="smtp.example.com", port=587),
        "settings_changed_at": T0,
    }
    values.update(changes)
    return ChannelConfig(**values)


def report(direction: str, state: ChannelState, minutes: int, **extra: Any) -> ChannelStatus:
    return ChannelStatus(
        channel_id="c1",
        direction=direction,  # type: ignore[arg-type]
        state=state,
        reported_by="test",
        at=T0 + timedelta(minutes=minutes),
        **extra,
    )


def test_both_directions_working_is_active() -> None:
    """Fresh successful reports for inbound and outbound: Active."""
    status = channel_status(
        channel(),
        {
            "inbound": report("inbound", ChannelState.ACTIVE, 1),
            "outbound": report("outbound", ChannelState.ACTIVE, 2),
        },
    )
    assert status.state is ChannelState.ACTIVE


def test_disabled_channel_is_inactive_with_reason_disabled() -> None:
    """Switched off: Inactive, reason 'disabled', whatever the reports say."""
    status = channel_status(
        channel(enabled=False, default_campaign_id=None),
        {
            "inbound": report("inbound", ChannelState.ACTIVE, 1),
            "outbound": report("outbound", ChannelState.ACTIVE, 1),
        },
    )
    assert (status.state, status.reason) == (ChannelState.INACTIVE, DISABLED)


def test_missing_direction_is_not_validated() -> None:
    """Only inbound proven: Inactive, not validated yet, naming outbound."""
    status = channel_status(
        channel(), {"inbound": report("inbound", ChannelState.ACTIVE, 1), "outbound": None}
    )
    assert (status.state, status.reason, status.direction) == (
        ChannelState.INACTIVE,
        NOT_VALIDATED,
        "outbound",
    )


def test_failure_shows_reason_and_step() -> None:
    """A failing direction makes it Inactive with that reason, step and direction."""
    status = channel_status(
        channel(),
        {
            "inbound": report("inbound", ChannelState.ACTIVE, 5),
            "outbound": report(
                "outbound", ChannelState.INACTIVE, 1, reason="535 bad login", step="auth"
            ),
        },
    )
    assert (status.state, status.reason, status.step, status.direction) == (
        ChannelState.INACTIVE,
        "535 bad login",
        "auth",
        "outbound",
    )


def test_reports_older_than_the_settings_do_not_count() -> None:
    """After a server change, an old success no longer makes the channel Active."""
    status = channel_status(
        channel(settings_changed_at=T0 + timedelta(hours=1)),
        {
            "inbound": report("inbound", ChannelState.ACTIVE, 1),
            "outbound": report("outbound", ChannelState.ACTIVE, 1),
        },
    )
    assert (status.state, status.reason) == (ChannelState.INACTIVE, NOT_VALIDATED)


def test_only_configured_directions_count() -> None:
    """A receive-only channel is Active on its inbound report alone."""
    status = channel_status(
        channel(outbound=None), {"inbound": report("inbound", ChannelState.ACTIVE, 1)}
    )
    assert status.state is ChannelState.ACTIVE
