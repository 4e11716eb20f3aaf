"""The config API against real Apache Kafka: what a client and the other services observe.

Each test has its own topic prefix (so its own topics and writer id) from the devstack
fixtures; nothing here stands in for Kafka.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest

from config_api.rules import NEEDS_DEFAULT_CAMPAIGN
from config_api.settings import ConfigApiSettings
from email_channels.events import ChannelConfig, ImapInbound, SmtpOutbound
from email_channels.settings import CommonSettings, KafkaSettings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    import httpx

    from devstack.kafka import KafkaEndpoint
    from email_channels.secretbox import SecretBox

    ApiFactory = Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]]
    RunApi = Callable[[ConfigApiSettings], AbstractAsyncContextManager[httpx.AsyncClient]]
    ReadTopic = Callable[[KafkaSettings, str], Awaitable[list[tuple[str, bytes | None]]]]

pytestmark = pytest.mark.integration

IMAP_PASSWORD = "imap-Secret-4711"
SMTP_PASSWORD = "smtp-Secret-0815"


def channel_body(campaign_id: str | None, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Support EU",
        "email_address": "support@example.com",
        "default_campaign_id": campaign_id,
        "enabled": campaign_id is not None,
        "inbound": {
            "host": " imap.example.com ",
            "port": 993,
            "tls": "ssl",
            "username": " support@example.com",
            "password": IMAP_PASSWORD,
            "folders": ["INBOX"],
            "after_fetch": "mark_seen",
        },
        "outbound": {
            "host": "smtp.example.com",
            "tls": "starttls",
            "username": "support@example.com",
            "password": SMTP_PASSWORD,
        },
    }
    body.update(changes)
    return body


def as_update(channel: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A GET response turned into a PUT body, passwords omitted (= keep the stored ones)."""
    body = {
        key: channel[key]
        for key in (
            "name",
            "email_address",
            "default_campaign_id",
            "enabled",
            "sync_recipient_only",
            "inbound",
            "outbound",
            "revision",
        )
    }
    for side in ("inbound", "outbound"):
        if body[side] is not None:
            body[side] = {k: v for k, v in body[side].items() if k != "password_set"}
    body.update(changes)
    return body


async def create_campaign(api: httpx.AsyncClient, name: str = "Sales", **extra: str) -> str:
    response = await api.post("/api/v1/campaigns", json={"name": name, **extra})
    assert response.status_code == 201, response.text
    campaign_id: str = response.json()["id"]
    return campaign_id


async def create_channel(api: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.post("/api/v1/channels", json=body)
    assert response.status_code == 201, response.text
    channel: dict[str, Any] = response.json()
    return channel


async def test_create_campaign_and_channel_then_read_them_back(api: httpx.AsyncClient) -> None:
    """A write is visible to the very next read; responses say password_set, never the secret."""
    campaign_id = await create_campaign(api)
    created = await create_channel(api, channel_body(campaign_id))

    fetched = await api.get(f"/api/v1/channels/{created['id']}")
    listed = await api.get("/api/v1/channels", params={"q": "port e"})
    campaigns = await api.get("/api/v1/campaigns")
    campaign = await api.get(f"/api/v1/campaigns/{campaign_id}")

    assert fetched.status_code == 200
    channel = fetched.json()
    assert channel == created
    assert channel["revision"] == 1
    assert channel["enabled"] is True
    assert channel["default_campaign_name"] == "Sales"
    assert channel["inbound"]["host"] == "imap.example.com"
    assert channel["inbound"]["username"] == "support@example.com"
    assert channel["inbound"]["password_set"] is True
    assert channel["outbound"]["port"] == 587
    assert channel["outbound"]["password_set"] is True
    assert channel["status"]["state"] == "inactive"
    assert [c["id"] for c in listed.json()["items"]] == [created["id"]]
    assert campaigns.json()["items"] == [campaign.json()]
    for response in (fetched, listed):
        assert IMAP_PASSWORD not in response.text
        assert SMTP_PASSWORD not in response.text
        assert "ciphertext" not in response.text


async def test_passwords_reach_kafka_encrypted(
    api: httpx.AsyncClient,
    kafka_settings: KafkaSettings,
    secret_box: SecretBox,
    read_topic: ReadTopic,
) -> None:
    """The record on email.channels holds ciphertext that only the keyring opens."""
    created = await create_channel(api, channel_body(None))

    records = await read_topic(kafka_settings, kafka_settings.topics.channels)

    [(key, value)] = records
    assert key == created["id"]
    assert value is not None
    assert IMAP_PASSWORD.encode() not in value
    assert SMTP_PASSWORD.encode() not in value
    config = ChannelConfig.model_validate_json(value)
    assert isinstance(config.inbound, ImapInbound)
    assert isinstance(config.outbound, SmtpOutbound)
    assert config.outbound.password is not None
    assert secret_box.decrypt(config.inbound.password) == IMAP_PASSWORD
    assert secret_box.decrypt(config.outbound.password) == SMTP_PASSWORD


async def test_enabling_without_default_campaign_is_refused(
    api: httpx.AsyncClient, kafka_settings: KafkaSettings, read_topic: ReadTopic
) -> None:
    """422 naming `enabled` and saying a default campaign is needed; nothing is written."""
    response = await api.post("/api/v1/channels", json=channel_body(None, enabled=True))
    unknown = await api.post("/api/v1/channels", json=channel_body("no-such-campaign"))

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "enabled"]
    assert error["msg"] == NEEDS_DEFAULT_CAMPAIGN
    assert unknown.status_code == 422
    assert [e["field"] for e in unknown.json()["detail"]] == ["default_campaign_id"]
    assert (await api.get("/api/v1/channels")).json()["total"] == 0
    assert await read_topic(kafka_settings, kafka_settings.topics.channels) == []


async def test_invalid_input_names_the_field_and_never_echoes_secrets(
    api: httpx.AsyncClient,
) -> None:
    """FastAPI would echo the whole body for a missing field; ours names fields only."""
    missing_name = channel_body(None)
    del missing_name["name"]
    stray_space = channel_body(None)
    stray_space["outbound"]["password"] = f" {SMTP_PASSWORD}"
    bad_json = await api.post(
        "/api/v1/channels",
        content=b'{"name": "x", "inbound": {"password": "' + IMAP_PASSWORD.encode(),
        headers={"Content-Type": "application/json"},
    )

    responses = [
        await api.post("/api/v1/channels", json=missing_name),
        await api.post("/api/v1/channels", json=stray_space),
        bad_json,
    ]

    assert [r.status_code for r in responses] == [422, 422, 422]
    assert [e["field"] for e in responses[0].json()["detail"]] == ["name"]
    assert [e["field"] for e in responses[1].json()["detail"]] == ["outbound.password"]
    assert "space" in responses[1].json()["detail"][0]["msg"]
    for response in responses:
        assert IMAP_PASSWORD not in response.text
        assert SMTP_PASSWORD not in response.text


async def test_stale_revision_is_refused_without_losing_the_other_update(
    api: httpx.AsyncClient,
    secret_box: SecretBox,
    kafka_settings: KafkaSettings,
    read_topic: ReadTopic,
) -> None:
    """Two clients edit revision 1: the second gets 409 naming revision 2; the first's change
    stays. An update without passwords keeps the stored ones."""
    campaign_id = await create_campaign(api)
    channel = await create_channel(api, channel_body(None))

    first = await api.put(
        f"/api/v1/channels/{channel['id']}",
        json=as_update(channel, default_campaign_id=campaign_id, enabled=True),
    )
    second = await api.put(
        f"/api/v1/channels/{channel['id']}", json=as_update(channel, name="Renamed")
    )
    now = (await api.get(f"/api/v1/channels/{channel['id']}")).json()

    assert first.status_code == 200, first.text
    assert first.json()["revision"] == 2
    assert second.status_code == 409
    assert second.json()["current_revision"] == 2
    assert "revision is 2" in second.json()["detail"]
    assert now["name"] == "Support EU"
    assert now["enabled"] is True
    assert now["revision"] == 2
    records = await read_topic(kafka_settings, kafka_settings.topics.channels)
    latest = ChannelConfig.model_validate_json(records[-1][1] or b"")
    assert latest.revision == 2
    assert isinstance(latest.inbound, ImapInbound)
    assert secret_box.decrypt(latest.inbound.password) == IMAP_PASSWORD


async def test_delete_tombstones_channel_and_filters(
    api: httpx.AsyncClient, kafka_settings: KafkaSettings, read_topic: ReadTopic
) -> None:
    """DELETE leaves tombstones on email.channels and email.filters; the channel is gone."""
    channel = await create_channel(api, channel_body(None))

    stale = await api.delete(f"/api/v1/channels/{channel['id']}", params={"revision": 7})
    deleted = await api.delete(f"/api/v1/channels/{channel['id']}")
    again = await api.delete(f"/api/v1/channels/{channel['id']}")

    assert stale.status_code == 409
    assert deleted.status_code == 204
    assert again.status_code == 404
    assert (await api.get(f"/api/v1/channels/{channel['id']}")).status_code == 404
    channels = await read_topic(kafka_settings, kafka_settings.topics.channels)
    filters = await read_topic(kafka_settings, kafka_settings.topics.filters)
    assert channels[-1] == (channel["id"], None)
    assert filters == [(channel["id"], None)]


async def test_a_restarted_instance_sees_the_same_config(api_factory: ApiFactory) -> None:
    """State is rebuilt from Kafka: a new instance on the same topics serves the same channels,
    and revisions continue where they were."""
    async with api_factory() as first:
        campaign_id = await create_campaign(first, "Support", id="support")
        created = await create_channel(first, channel_body(campaign_id))

    async with api_factory() as second:
        fetched = await second.get(f"/api/v1/channels/{created['id']}")
        campaigns = await second.get("/api/v1/campaigns")
        updated = await second.put(
            f"/api/v1/channels/{created['id']}", json=as_update(fetched.json(), enabled=False)
        )

    assert fetched.status_code == 200
    assert fetched.json() == created
    assert [c["id"] for c in campaigns.json()["items"]] == ["support"]
    assert updated.status_code == 200, updated.text
    assert updated.json()["revision"] == 2
    assert updated.json()["inbound"]["password_set"] is True


async def test_a_newer_instance_fences_the_older_one(
    api_factory: ApiFactory, kafka_settings: KafkaSettings, read_topic: ReadTopic
) -> None:
    """Two instances never both write: the one started last takes over, the older one refuses
    writes with 503 (nothing saved) and reports itself not ready."""
    async with api_factory() as old:
        await create_campaign(old, "Before")
        async with api_factory() as new:
            refused = await old.post("/api/v1/campaigns", json={"name": "Lost?"})
            old_ready = await old.get("/readyz")
            accepted = await new.post("/api/v1/campaigns", json={"name": "After"})

    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    assert "another config-api instance" in refused.json()["detail"]
    assert old_ready.status_code == 503
    assert accepted.status_code == 201
    records = await read_topic(kafka_settings, kafka_settings.topics.campaigns)
    names = sorted(json.loads(value or b"{}")["name"] for _key, value in records)
    assert names == ["After", "Before"]  # "Lost?" never reached Kafka


async def test_campaign_ids_may_be_chosen_once(api: httpx.AsyncClient) -> None:
    """Campaign services filter by campaign id, so they may pick it; taking it twice is 409."""
    assert await create_campaign(api, "Sales", id="sales") == "sales"
    again = await api.post("/api/v1/campaigns", json={"name": "Other", "id": "sales"})
    missing = await api.get("/api/v1/campaigns/nope")

    assert again.status_code == 409
    assert missing.status_code == 404


async def test_writes_are_counted_in_metrics(api: httpx.AsyncClient) -> None:
    await create_channel(api, channel_body(None))
    await api.post("/api/v1/channels", json=channel_body(None, enabled=True))

    text = (await api.get("/metrics")).text

    assert 'config_api_writes_total{entity="channel",operation="create",outcome="ok"}' in text
    assert 'config_api_writes_total{entity="channel",operation="create",outcome="invalid"}' in text


async def test_creates_missing_topics_when_asked(
    kafka: KafkaEndpoint, topic_prefix: str, secret_keys: str, run_api: RunApi
) -> None:
    """With CONFIG_API_ENSURE_TOPICS the service creates the contract's topics itself."""
    settings = ConfigApiSettings(
        kafka=KafkaSettings(
            bootstrap_servers=kafka.bootstrap_servers, topic_prefix=topic_prefix, partitions=2
        ),
        common=CommonSettings(secret_keys=secret_keys),
        ensure_topics=True,
    )

    async with run_api(settings) as api:
        created = await api.post("/api/v1/campaigns", json={"name": "First"})

    assert created.status_code == 201


async def test_channel_list_pages_on_the_server_with_the_search_and_a_total(
    api: httpx.AsyncClient,
) -> None:
    """150 channels: limit/offset give consecutive pages by name with the total of all matches;
    the search filters apply before paging; the default page is 100 and 1001 is refused."""
    campaign = (await api.post("/api/v1/campaigns", json={"name": "Support"})).json()["id"]

    async def create(number: int) -> None:
        body = {"name": f"Shop {number:03}", "email_address": f"shop{number:03}@example.test"}
        if number % 3 == 0:
            body["default_campaign_id"] = campaign
        response = await api.post("/api/v1/channels", json=body)
        assert response.status_code == 201, response.text

    for start in range(0, 150, 50):  # writes are serialised by the store; ~40 ms each
        await asyncio.gather(*(create(n) for n in range(start, start + 50)))

    page = (await api.get("/api/v1/channels", params={"limit": 25, "offset": 100})).json()
    assert page["total"] == 150
    assert (page["limit"], page["offset"]) == (25, 100)
    assert [c["name"] for c in page["items"]] == [f"Shop {n:03}" for n in range(100, 125)]
    last = (await api.get("/api/v1/channels", params={"limit": 25, "offset": 140})).json()
    assert [c["name"] for c in last["items"]] == [f"Shop {n:03}" for n in range(140, 150)]
    default = (await api.get("/api/v1/channels")).json()
    assert (len(default["items"]), default["total"]) == (100, 150)

    searched = (
        await api.get(
            "/api/v1/channels",
            params={"default_campaign_id": campaign, "q": "shop 1", "limit": 10, "offset": 10},
        )
    ).json()
    # Shop 100..149 using the campaign: every third one, 16 in all; the second page of 10.
    assert searched["total"] == 16
    assert [c["name"] for c in searched["items"]] == [f"Shop {n:03}" for n in range(132, 150, 3)]
    beyond = (await api.get("/api/v1/channels", params={"offset": 1000})).json()
    assert (beyond["items"], beyond["total"]) == ([], 150)

    too_big = await api.get("/api/v1/channels", params={"limit": 1001})
    assert too_big.status_code == 422
    assert too_big.json()["detail"][0]["field"] == "limit"
