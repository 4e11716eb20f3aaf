"""Production mode: services refuse to start on topics weaker than replication 3 / min ISR 2."""

from __future__ import annotations

import asyncio
import os

import pytest

from devstack.processes import ChildService
from email_channels.admin import TopicMismatch, ensure_topics
from email_channels.settings import KafkaSettings

pytestmark = pytest.mark.integration


async def test_durable_mode_refuses_single_replica_topics(kafka, topic_prefix):
    """On a one-broker cluster the check names the weak topics and how to allow them locally."""
    settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=topic_prefix,
        partitions=1,
        min_insync_replicas=1,
    )
    await ensure_topics(settings)  # local mode: fine
    durable = settings.model_copy(update={"require_durable_topics": True})
    with pytest.raises(TopicMismatch) as raised:
        await ensure_topics(durable)
    message = str(raised.value)
    assert f"{topic_prefix}email.channels (replication factor 1, min.insync.replicas 1)" in message
    assert "KAFKA_REQUIRE_DURABLE_TOPICS=false" in message


async def test_sender_refuses_to_start_in_production_mode_on_weak_topics(
    kafka_settings, secret_keys, tmp_path
):
    """The sender process exits non-zero with the durability message, before consuming."""
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "KAFKA_REQUIRE_DURABLE_TOPICS": "true",
        "EMAIL_CHANNELS_SECRET_KEYS": secret_keys,
        "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{tmp_path}/blobs",
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
    }
    async with ChildService("sender", env) as child:
        line = await child.wait_for_log("sender stopped", timeout=60)
        code = await asyncio.wait_for(child._process.wait(), 30)
    assert code == 1
    assert "production mode needs every topic on at least 3 replicas" in line
    assert not any("sender ready" in entry for entry in child.lines)
