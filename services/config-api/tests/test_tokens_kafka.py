"""Static API tokens against real Kafka: created by an admin, shown once, stored hashed,
usable with their role, revoked at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from config_api.auth import token_digest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx

    from config_api.settings import ConfigApiSettings
    from email_channels.settings import KafkaSettings

    ReadTopic = Callable[[KafkaSettings, str], Awaitable[list[tuple[str, bytes | None]]]]

pytestmark = pytest.mark.integration


async def test_api_token_lifecycle(
    api: httpx.AsyncClient,
    api_settings: ConfigApiSettings,
    kafka_settings: KafkaSettings,
    read_topic: ReadTopic,
) -> None:
    """A viewer token reads but cannot write; the list never shows it; only its hash reaches
    Kafka; after revocation it is 401."""
    created = await api.post("/api/v1/tokens", json={"name": "report job", "role": "viewer"})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    as_viewer = {"Authorization": f"Bearer {token}"}

    me = await api.get("/api/v1/me", headers=as_viewer)
    listing = await api.get("/api/v1/channels", headers=as_viewer)
    write = await api.post("/api/v1/campaigns", json={"name": "X"}, headers=as_viewer)
    tokens = await api.get("/api/v1/tokens")
    viewer_tokens = await api.get("/api/v1/tokens", headers=as_viewer)
    records = await read_topic(kafka_settings, kafka_settings.topics.api_tokens)
    revoked = await api.delete(f"/api/v1/tokens/{created.json()['id']}")
    after = await api.get("/api/v1/me", headers=as_viewer)

    assert me.json()["role"] == "viewer"
    assert me.json()["subject"] == f"token:{created.json()['id']}"
    assert listing.status_code == 200
    assert write.status_code == 403
    assert viewer_tokens.status_code == 403
    assert [t["name"] for t in tokens.json()["items"]] == ["report job"]
    assert token not in tokens.text
    assert all(token.encode() not in (value or b"") for _, value in records)
    assert any(token_digest(token).encode() in (value or b"") for _, value in records)
    assert revoked.status_code == 204
    assert after.status_code == 401
    assert api_settings.admin_token is not None


async def test_forged_token_with_known_id_is_refused(api: httpx.AsyncClient) -> None:
    """The id part of a token alone signs nobody in: the whole token's hash must match."""
    created = await api.post("/api/v1/tokens", json={"name": "ci", "role": "admin"})
    token_id = created.json()["id"]

    forged = await api.get(
        "/api/v1/me", headers={"Authorization": f"Bearer ecat_{token_id}_guessed"}
    )

    assert forged.status_code == 401
