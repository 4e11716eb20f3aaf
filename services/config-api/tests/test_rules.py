"""Channel rules: each broken rule is reported with the field to fix."""

from __future__ import annotations

from config_api.rules import NEEDS_DEFAULT_CAMPAIGN, channel_problems
from email_channels.events import AfterFetch, ChannelConfig, ImapInbound, SmtpOutbound

CIPHERTEXT = "v1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def imap(**changes: object) -> ImapInbound:
    fields: dict[str, object] = {
        "host": "imap.example.com",
        "port": 993,
        "username": "u",
        "password": CIPHERTEXT,
    }
    return ImapInbound.model_validate({**fields, **changes})


def channel(**changes: object) -> ChannelConfig:
    return ChannelConfig.model_validate({"id": "c1", "name": "Support", **changes})


def no_campaigns(_campaign_id: str) -> bool:
    return False


def only_sales(campaign_id: str) -> bool:
    return campaign_id == "sales"


def fields(config: ChannelConfig, exists: object = only_sales) -> list[str]:
    return [p.field for p in channel_problems(config, campaign_exists=exists)]  # type: ignore[arg-type]


def test_a_disabled_channel_without_campaign_is_fine() -> None:
    assert fields(channel()) == []


def test_enabling_needs_a_default_campaign() -> None:
    """Enabled without a default campaign is refused on `enabled`, with a message saying so."""
    problems = channel_problems(channel(enabled=True), campaign_exists=no_campaigns)

    assert [p.loc for p in problems] == [("body", "enabled")]
    assert problems[0].message == NEEDS_DEFAULT_CAMPAIGN
    assert "default campaign" in problems[0].message


def test_default_campaign_must_exist() -> None:
    assert fields(channel(default_campaign_id="nope", enabled=True)) == ["default_campaign_id"]
    assert fields(channel(default_campaign_id="sales", enabled=True)) == []


def test_move_needs_a_target_folder_and_only_move_uses_one() -> None:
    assert fields(channel(inbound=imap(after_fetch=AfterFetch.MOVE))) == ["inbound.move_to_folder"]
    assert fields(channel(inbound=imap(after_fetch=AfterFetch.MOVE, move_to_folder="Done"))) == []
    assert fields(channel(inbound=imap(move_to_folder="Done"))) == ["inbound.move_to_folder"]


def test_imap_needs_a_folder_unless_syncing_all() -> None:
    assert fields(channel(inbound=imap(folders=[]))) == ["inbound.folders"]
    assert fields(channel(inbound=imap(folders=[], sync_all_folders=True))) == []


def test_smtp_login_needs_username_and_password_together() -> None:
    smtp = {"host": "smtp.example.com", "port": 587}
    assert fields(channel(outbound=SmtpOutbound.model_validate(smtp))) == []
    assert fields(
        channel(outbound=SmtpOutbound.model_validate({**smtp, "password": CIPHERTEXT}))
    ) == ["outbound.username"]
    assert fields(channel(outbound=SmtpOutbound.model_validate({**smtp, "username": "u"}))) == [
        "outbound.password"
    ]


def test_all_problems_are_reported_at_once() -> None:
    config = channel(enabled=True, inbound=imap(folders=[], after_fetch=AfterFetch.MOVE))
    assert fields(config) == ["enabled", "inbound.folders", "inbound.move_to_folder"]
