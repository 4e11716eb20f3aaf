"""The shared Kafka glue against a real broker: topics, durable producer, views, consume loop."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from email_channels.admin import TopicMismatch, ensure_topics
from email_channels.codec import decode, encode, header
from email_channels.compacted import CompactedView
from email_channels.consume import DeadLetters, RetryPolicy, consume, make_consumer
from email_channels.errors import PermanentError, TransientError
from email_channels.events import Campaign, DeadLetter
from email_channels.producer import EventProducer
from email_channels.settings import KafkaSettings

if TYPE_CHECKING:
    from devstack.kafka import KafkaEndpoint

pytestmark = pytest.mark.integration


async def _topic_configs(settings: KafkaSettings) -> dict[str, str]:
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    await admin.start()
    try:
        from aiokafka.admin.config_resource import (  # noqa: PLC0415
            ConfigResource,
            ConfigResourceType,
        )

        names = list(settings.topics.all())
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, {"cleanup.policy": None}) for n in names]
        )
        return {
            resource[3]: next(e[1] for e in resource[4] if e[0] == "cleanup.policy")
            for resource in response.resources
        }
    finally:
        await admin.close()


async def test_ensure_topics_creates_the_contract_and_is_idempotent(
    kafka_settings: KafkaSettings,
) -> None:
    """Compacted where the contract says so, delete elsewhere; a second run changes nothing."""
    await ensure_topics(kafka_settings)  # the fixture already ran it once
    policies = await _topic_configs(kafka_settings)
    topics = kafka_settings.topics
    assert policies[topics.channels] == "compact"
    assert policies[topics.fetch_cursors] == "compact"
    assert policies[topics.channel_status] == "compact"
    assert policies[topics.raw] == "delete"
    assert policies[topics.dlq] == "delete"
    assert len(policies) == len(topics.all())


async def test_ensure_topics_refuses_a_channels_topic_that_is_not_compacted(
    kafka: KafkaEndpoint,
) -> None:
    """A pre-existing topic that would lose config on retention stops start-up, named."""
    settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap_servers, topic_prefix=f"m-{uuid.uuid4().hex[:8]}."
    )
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(settings.topics.channels, 1, 1, topic_configs={"cleanup.policy": "delete"})]
        )
        assert [error[1] for error in response.topic_errors] == [0], response
    finally:
        await admin.close()
    with pytest.raises(TopicMismatch, match=r"email\.channels has cleanup.policy=delete"):
        await ensure_topics(settings)


async def test_view_reads_back_writes_and_applies_tombstones(
    kafka_settings: KafkaSettings,
) -> None:
    """Read-your-writes: after wait_for the view holds the record; a tombstone removes it;
    a record that does not decode is kept out of the view, not fatal."""
    topic = kafka_settings.topics.campaigns
    view = CompactedView(kafka_settings, topic, Campaign, client_id="view-test")
    await view.start()
    try:
        async with EventProducer(kafka_settings, client_id="view-test") as producer:
            meta = await producer.publish(topic, "c1", Campaign(id="c1", name="Support"))
            await view.wait_for(meta.partition, meta.offset)
            assert view.get("c1") == Campaign.model_validate(
                {"id": "c1", "name": "Support", "updated_at": view.get("c1").updated_at}  # type: ignore[union-attr]
            )
            poison = await producer.publish_raw(topic, b"c2", b"not json", [])
            await view.wait_for(poison.partition, poison.offset)
            assert "c2" not in view
            assert view.poison_count == 1
            gone = await producer.publish(topic, "c1", None)
            await view.wait_for(gone.partition, gone.offset)
            assert "c1" not in view
    finally:
        await view.stop()


async def _read_dead_letters(settings: KafkaSettings, *, expected: int) -> list[DeadLetter]:
    dlq = make_consumer(settings, settings.topics.dlq, group_id=None, client_id="dlq-reader")
    await dlq.start()
    try:
        letters: list[DeadLetter] = []
        for _ in range(20):
            for records in (await dlq.getmany(timeout_ms=500)).values():
                letters += [decode(DeadLetter, r.value) for r in records]
                assert all(header(r.headers, "schema") == "DeadLetter/v1" for r in records)
            if len(letters) >= expected:
                break
    finally:
        await dlq.stop()
    return letters


async def test_consume_dead_letters_poison_and_commits_past_it(
    kafka_settings: KafkaSettings,
) -> None:
    """A bad record goes to email.dlq with stage, origin and reason; good ones are handled;
    a new consumer of the same group starts after them (offsets committed)."""
    topics = kafka_settings.topics
    handled: list[str] = []

    async def handler(record: Any) -> None:
        campaign = decode(Campaign, record.value)
        if campaign.name == "explode":
            raise PermanentError("campaign refused by the test")
        handled.append(campaign.id)

    async with EventProducer(kafka_settings, client_id="consume-test") as producer:
        await producer.publish(topics.campaigns, "a", Campaign(id="a", name="A"))
        await producer.publish_raw(topics.campaigns, b"b", b"{broken", [])
        await producer.publish(topics.campaigns, "c", Campaign(id="c", name="explode"))
        await producer.publish(topics.campaigns, "d", Campaign(id="d", name="D"))

        group = f"{kafka_settings.topic_prefix}consume-test"
        consumer = make_consumer(kafka_settings, topics.campaigns, group_id=group, client_id="t")
        await consumer.start()
        stopping = asyncio.Event()
        task = asyncio.create_task(
            consume(
                consumer,
                handler,
                dead_letters=DeadLetters(producer, stage="test"),
                stopping=stopping,
                stage="test",
                policy=RetryPolicy(attempts=2, first_backoff=0.01),
            )
        )
        deadline = asyncio.get_running_loop().time() + 30
        while len(handled) < 2 and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        stopping.set()
        await task
        await consumer.stop()

    assert sorted(handled) == ["a", "d"]

    letters = await _read_dead_letters(kafka_settings, expected=2)
    by_key = {letter.original_key: letter for letter in letters}
    assert by_key[b"b"].error_kind == "PoisonRecord"
    assert by_key[b"b"].original_value == b"{broken"
    assert by_key[b"c"].error_kind == "PermanentError"
    assert by_key[b"c"].error_message == "campaign refused by the test"
    assert {letter.stage for letter in letters} == {"test"}
    assert all(letter.source_topic == topics.campaigns for letter in letters)

    again = make_consumer(kafka_settings, topics.campaigns, group_id=group, client_id="t2")
    await again.start()
    try:
        leftovers = await again.getmany(timeout_ms=3000)
    finally:
        await again.stop()
    assert not any(leftovers.values()), "committed offsets should skip handled records"


async def test_a_view_that_does_not_retain_only_reports_changes(
    kafka_settings: KafkaSettings,
) -> None:
    """retain=False: every record reaches on_change, none is kept in the view."""
    topic = kafka_settings.topics.campaigns
    seen: list[tuple[str, str | None]] = []

    async def observe(key: str, campaign: Campaign | None) -> None:
        seen.append((key, campaign.name if campaign else None))

    async with EventProducer(kafka_settings, client_id="fold-test") as producer:
        await producer.publish(topic, "c1", Campaign(id="c1", name="One"))
        await producer.publish(topic, "c1", None)
    view = CompactedView(
        kafka_settings, topic, Campaign, client_id="fold-test", on_change=observe, retain=False
    )
    await view.start()
    try:
        assert len(view) == 0
        assert seen == [("c1", "One"), ("c1", None)]
    finally:
        await view.stop()


async def test_a_view_passes_over_records_its_skip_predicate_names(
    kafka_settings: KafkaSettings,
) -> None:
    """skip(headers) true: the record is neither decoded nor reported, yet the view's position
    moves past it (catch_up returns); the other records are applied."""
    topic = kafka_settings.topics.campaigns
    seen: list[str] = []

    async def observe(key: str, _campaign: Campaign | None) -> None:
        seen.append(key)

    def mine(headers: Any) -> bool:
        return ("publisher-instance", b"me") in headers

    view = CompactedView(
        kafka_settings, topic, Campaign, client_id="skip-test", on_change=observe, skip=mine
    )
    await view.start()
    try:
        async with EventProducer(kafka_settings, client_id="skip-test") as producer:
            own = [("publisher-instance", b"me")]
            other = [("publisher-instance", b"someone-else")]
            await producer.publish(topic, "c1", Campaign(id="c1", name="One"), headers=own)
            await producer.publish(topic, "c2", Campaign(id="c2", name="Two"), headers=other)
            last = await producer.publish_raw(topic, b"c3", b"not json", own)
        await view.wait_for(last.partition, last.offset)
        await view.catch_up()
        assert seen == ["c2"]
        assert view.poison_count == 0  # the undecodable record was never decoded
    finally:
        await view.stop()


async def test_a_view_reads_zstd_records(kafka_settings: KafkaSettings) -> None:
    """Records compressed with zstd (the router's default) are read by every reader built on
    email_channels: the package brings aiokafka's zstd codec (cramjam) with it."""
    topic = kafka_settings.topics.campaigns
    producer = AIOKafkaProducer(**kafka_settings.client_kwargs(), compression_type="zstd")
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, key=b"z1", value=encode(Campaign(id="z1", name="Zstd")), headers=[]
        )
    finally:
        await producer.stop()
    view = CompactedView(kafka_settings, topic, Campaign, client_id="zstd-test")
    await view.start()
    try:
        campaign = view.get("z1")
        assert campaign is not None
        assert campaign.name == "Zstd"
    finally:
        await view.stop()


async def test_a_view_whose_reader_dies_is_no_longer_caught_up(
    kafka_settings: KafkaSettings,
) -> None:
    """Readiness must not trust a view that stopped reading: it reports not caught up and
    read-your-writes waits fail at once instead of timing out."""
    view = CompactedView(kafka_settings, kafka_settings.topics.campaigns, Campaign, client_id="d")
    await view.start()
    try:
        assert view.caught_up
        assert view._consumer is not None
        await view._consumer.stop()  # the reader's next poll fails
        for _ in range(50):
            if view.failure is not None:
                break
            await asyncio.sleep(0.1)
        assert view.failure is not None
        assert not view.caught_up
        with pytest.raises(TransientError, match="died"):
            await view.wait_for(0, 10**9, timeout=5)
    finally:
        await view.stop()
