"""Builders and in-memory fakes for the sender's unit tests (no network, no Kafka)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from email_channels.events import (
    ChannelConfig,
    Contract,
    OutboundEmail,
    SmtpOutbound,
    TlsMode,
)
from email_channels.secretbox import SecretBox


class FakePublisher:
    """Stands in for EventProducer.publish: keeps (topic, key, event); can fail on request."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, Contract | None]] = []
        self.raw: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.fail_with: list[Exception | None] = []
        """One entry per next publish: raise it, or None to let that publish through."""

    async def publish(
        self, topic: str, key: str, event: Contract | None, *, headers: Any = None
    ) -> object:
        failure = self.fail_with.pop(0) if self.fail_with else None
        if failure is not None:
            raise failure
        self.published.append((topic, key, event))
        return None

    async def publish_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Any
    ) -> object:
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.raw.append((topic, key, value, list(headers)))
        return None

    def events(self, topic: str) -> list[Any]:
        return [event for t, _key, event in self.published if t == topic]


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture(scope="session")
def unit_secret_box() -> SecretBox:
    return SecretBox.from_env(f"unit:{SecretBox.generate_key()}")


@pytest.fixture
def make_channel(unit_secret_box: SecretBox) -> Any:
    def _make(**overrides: Any) -> ChannelConfig:
        values: dict[str, Any] = {
            "id": "ch-1",
            "name": "Support",
            "email_address": "support@shop.example",
            "default_campaign_id": "camp-1",
            "enabled": True,
            "outbound": SmtpOutbound(
                host="smtp.shop.example",
                port=587,
                tls=TlsMode.STARTTLS,
                username="support@shop.example",
                password=unit_secret_box.encrypt("hunter2"),
            ),
        }
        values.update(overrides)
        return ChannelConfig(**values)

    return _make


@pytest.fixture
def make_outbound() -> Any:
    def _make(**overrides: Any) -> OutboundEmail:
        values: dict[str, Any] = {
            "outbound_id": f"out-{uuid.uuid4().hex[:12]}",
            "channel_id": "ch-1",
            "conversation_id": "conv-1",
            "to": [{"name": "Ada Customer", "address": "ada@customer.example"}],
            "subject": "Re: my order",
            "text_body": "Your parcel is on its way.\n",
        }
        values.update(overrides)
        return OutboundEmail.model_validate(values)

    return _make
