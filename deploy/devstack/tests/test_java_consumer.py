"""The Java consumer (examples/java-consumer) really validates: a bad record fails it."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import pytest

from devstack.java_consumer import validate_topic
from email_channels.events import RoutedEmail, RoutingReason, SourceIdentity
from email_channels.headers import CAMPAIGN_HEADER
from email_channels.producer import EventProducer

if TYPE_CHECKING:
    from email_channels.settings import KafkaSettings

pytestmark = pytest.mark.integration


async def test_a_record_that_breaks_the_schema_or_the_header_fails_the_java_consumer(
    kafka_settings: KafkaSettings,
) -> None:
    """One valid record passes; a record missing a required field, and one whose campaign
    header disagrees with its body, are each reported and fail the run."""
    good = RoutedEmail(
        email_id="e-1",
        channel_id="ch-1",
        campaign_id="support",
        reason=RoutingReason(kind="default"),
        conversation_id="c-1",
        source=SourceIdentity(protocol="pop3", uidl="u-1"),
    )
    bad = json.loads(good.model_dump_json(by_alias=True))
    del bad["campaign_id"]
    topic = kafka_settings.topics.routed
    async with EventProducer(kafka_settings, client_id="t-java") as producer:
        value = good.model_dump_json(by_alias=True).encode()
        await producer.raw.send_and_wait(topic, value, headers=[(CAMPAIGN_HEADER, b"support")])
        await producer.raw.send_and_wait(topic, value, headers=[(CAMPAIGN_HEADER, b"billing")])
        await producer.raw.send_and_wait(topic, json.dumps(bad).encode())

    result = await asyncio.to_thread(
        validate_topic,
        kafka_settings.bootstrap_servers,
        topic,
        "email.routed.schema.json",
        min_records=3,
    )
    assert not result.ok
    assert "validated=3 invalid=1 campaign_header_mismatch=2" in result.output, result.output
