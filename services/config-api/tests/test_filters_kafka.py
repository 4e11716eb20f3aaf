"""Filters, campaigns and bulk actions through the API against real Kafka: what an
administrator does to set up routing, and what the router then reads from email.filters."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx

    from email_channels.settings import KafkaSettings

    ReadTopic = Callable[[KafkaSettings, str], Awaitable[list[tuple[str, bytes | None]]]]

pytestmark = pytest.mark.integration


async def campaign(api: httpx.AsyncClient, name: str) -> str:
    response = await api.post("/api/v1/campaigns", json={"name": name})
    assert response.status_code == 201, response.text
    campaign_id: str = response.json()["id"]
    return campaign_id


async def channel(api: httpx.AsyncClient, default_campaign_id: str | None, **extra: Any) -> str:
    body = {"name": "Support", "default_campaign_id": default_campaign_id, **extra}
    response = await api.post("/api/v1/channels", json=body)
    assert response.status_code == 201, response.text
    channel_id: str = response.json()["id"]
    return channel_id


def sample(subject: str, body: str = "", **headers: str) -> dict[str, Any]:
    fields = [{"name": "From", "value": "Alice <alice@customer.example>"}]
    fields.append({"name": "Subject", "value": subject})
    fields += [{"name": name.replace("_", "-"), "value": v} for name, v in headers.items()]
    return {"headers": fields, "body": body}


async def test_filter_list_round_trip_reaches_kafka_and_routes_samples(
    api: httpx.AsyncClient, kafka_settings: KafkaSettings, read_topic: ReadTopic
) -> None:
    """PUT the ordered list with its revision; email.filters holds it; filter_count follows;
    'test this message' names the first matching filter, or the default campaign."""
    support = await campaign(api, "Support")
    billing = await campaign(api, "Billing")
    spam = await campaign(api, "Spam")
    channel_id = await channel(api, support)
    empty = await api.get(f"/api/v1/channels/{channel_id}/filters")
    assert empty.json()["revision"] == 0

    saved = await api.put(
        f"/api/v1/channels/{channel_id}/filters",
        json={
            "revision": 0,
            "filters": [
                {"name": "invoices", "campaign_id": billing, "subject_keywords": ["Invoice"]},
                {
                    "name": "newsletters",
                    "campaign_id": spam,
                    "header_conditions": [{"header": "List-Id", "keywords": ["news"]}],
                },
                {"name": "orders", "campaign_id": billing, "regex": r"order\s+#?\d+"},
            ],
        },
    )
    stale = await api.put(
        f"/api/v1/channels/{channel_id}/filters", json={"revision": 0, "filters": []}
    )
    listing = await api.get("/api/v1/channels")
    invoice = await api.post(
        f"/api/v1/channels/{channel_id}/filters/test", json=sample("Your INVOICE 7")
    )
    order = await api.post(
        f"/api/v1/channels/{channel_id}/filters/test",
        json=sample("Question", "about Order #123"),
    )
    other = await api.post(
        f"/api/v1/channels/{channel_id}/filters/test", json=sample("Hello", "where is it?")
    )
    records = await read_topic(kafka_settings, kafka_settings.topics.filters)

    assert saved.status_code == 200, saved.text
    assert saved.json()["revision"] == 1
    assert [f["name"] for f in saved.json()["filters"]] == ["invoices", "newsletters", "orders"]
    assert saved.json()["filters"][0]["campaign_name"] == "Billing"
    assert stale.status_code == 409
    assert stale.json()["current_revision"] == 1
    assert listing.json()["items"][0]["filter_count"] == 3
    assert invoice.json()["reason"] == "filter"
    assert invoice.json()["filter_name"] == "invoices"
    assert invoice.json()["campaign_name"] == "Billing"
    assert order.json()["filter_name"] == "orders"
    assert [c["matched"] for c in order.json()["checked"]] == [False, False, True]
    assert other.json()["reason"] == "default"
    assert other.json()["campaign_id"] == support
    value = next(value for key, value in records if key == channel_id)
    stored = json.loads(value or b"{}")
    assert stored["filters"][1]["header_conditions"] == [
        {"header": "List-Id", "keywords": ["news"]}
    ]


async def test_single_filter_operations_and_reorder(api: httpx.AsyncClient) -> None:
    """Create (at a position), update in place, reorder and delete one filter at a time."""
    target = await campaign(api, "Sales")
    channel_id = await channel(api, target)
    base = f"/api/v1/channels/{channel_id}/filters"

    first = await api.post(base, json={"name": "a", "campaign_id": target, "all_of": ["x"]})
    second = await api.post(
        base, json={"name": "b", "campaign_id": target, "body_keywords": ["y"], "position": 0}
    )
    ids = [f["id"] for f in second.json()["filters"]]
    updated = await api.put(
        f"{base}/{ids[1]}",
        json={"name": "a2", "campaign_id": target, "sender_keywords": ["z"]},
        params={"revision": 2},
    )
    reordered = await api.post(f"{base}/reorder", json={"order": ids[::-1], "revision": 3})
    bad_order = await api.post(f"{base}/reorder", json={"order": ids[:1]})
    deleted = await api.delete(f"{base}/{ids[0]}")
    missing = await api.delete(f"{base}/{ids[0]}")

    assert first.status_code == 201, first.text
    assert [f["name"] for f in second.json()["filters"]] == ["b", "a"]
    assert updated.status_code == 200, updated.text
    assert [f["name"] for f in updated.json()["filters"]] == ["b", "a2"]
    assert [f["name"] for f in reordered.json()["filters"]] == ["a2", "b"]
    assert bad_order.status_code == 422
    assert bad_order.json()["detail"][0]["field"] == "order"
    assert [f["name"] for f in deleted.json()["filters"]] == ["a2"]
    assert deleted.json()["revision"] == 5
    assert missing.status_code == 404


async def test_bad_filters_are_refused_naming_the_field(api: httpx.AsyncClient) -> None:
    """Unknown target campaign, a catastrophic or invalid regex, an empty filter: 422 each,
    naming the field; nothing is saved."""
    target = await campaign(api, "Sales")
    channel_id = await channel(api, target)
    base = f"/api/v1/channels/{channel_id}/filters"

    unknown = await api.post(base, json={"campaign_id": "nope", "all_of": ["x"]})
    backref = await api.post(base, json={"campaign_id": target, "regex": r"(a+)\1+$"})
    empty = await api.post(base, json={"campaign_id": target})
    in_list = await api.put(
        base,
        json={"revision": 0, "filters": [{"campaign_id": target, "regex": "(?<=x)y"}]},
    )
    after = await api.get(base)

    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["field"] == "campaign_id"
    assert backref.status_code == 422
    assert backref.json()["detail"][0]["field"] == "regex"
    assert empty.status_code == 422
    assert "criterion" in empty.json()["detail"][0]["msg"]
    assert in_list.json()["detail"][0]["field"] == "filters.0.regex"
    assert after.json()["revision"] == 0


async def test_campaign_rename_and_delete_refused_while_used(api: httpx.AsyncClient) -> None:
    """Renaming keeps the id; deleting a campaign used as default or filter target is 409
    listing the channels; once unused it is deleted."""
    used = await campaign(api, "Support")
    target = await campaign(api, "Billing")
    spare = await campaign(api, "Spare")
    channel_id = await channel(api, used)
    await api.post(
        f"/api/v1/channels/{channel_id}/filters", json={"campaign_id": target, "all_of": ["x"]}
    )

    renamed = await api.put(f"/api/v1/campaigns/{used}", json={"name": "Customer care"})
    refused_default = await api.delete(f"/api/v1/campaigns/{used}")
    refused_target = await api.delete(f"/api/v1/campaigns/{target}")
    deleted = await api.delete(f"/api/v1/campaigns/{spare}")
    shown = await api.get(f"/api/v1/channels/{channel_id}")

    assert renamed.json() == {**renamed.json(), "id": used, "name": "Customer care"}
    assert shown.json()["default_campaign_name"] == "Customer care"
    assert refused_default.status_code == 409
    assert refused_default.json()["channels"] == [
        {"id": channel_id, "name": "Support", "default": True, "filter_ids": []}
    ]
    assert refused_target.status_code == 409
    assert refused_target.json()["channels"][0]["filter_ids"]
    assert deleted.status_code == 204
    assert (await api.get(f"/api/v1/campaigns/{spare}")).status_code == 404


async def test_bulk_enable_disable_delete(api: httpx.AsyncClient) -> None:
    """Each selected channel gets its own outcome; one refusal does not stop the others."""
    support = await campaign(api, "Support")
    with_default = await channel(api, support)
    without_default = await channel(api, None)

    enabled = await api.post(
        "/api/v1/channels/bulk",
        json={"action": "enable", "ids": [with_default, without_default, "missing"]},
    )
    after_enable = (await api.get(f"/api/v1/channels/{with_default}")).json()
    disabled = await api.post(
        "/api/v1/channels/bulk", json={"action": "disable", "ids": [with_default]}
    )
    after_disable = (await api.get(f"/api/v1/channels/{with_default}")).json()
    deleted = await api.post(
        "/api/v1/channels/bulk", json={"action": "delete", "ids": [with_default, without_default]}
    )

    assert [(i["ok"], i["status"]) for i in enabled.json()["items"]] == [
        (True, 200),
        (False, 422),
        (False, 404),
    ]
    assert after_enable["enabled"] is True
    assert disabled.json()["succeeded"] == 1
    assert after_disable["enabled"] is False
    assert after_disable["status"]["reason"] == "disabled"
    assert deleted.json() == {**deleted.json(), "succeeded": 2, "failed": 0}
    assert (await api.get("/api/v1/channels")).json()["total"] == 0


async def test_sync_recipient_only_needs_an_address(api: httpx.AsyncClient) -> None:
    """sync_recipient_only without an email address is a 422 naming email_address."""
    response = await api.post("/api/v1/channels", json={"name": "x", "sync_recipient_only": True})

    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "email_address"
