"""The faust wiring, checked without a broker: configuration the guarantees rest on."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from email_channels.blobstore import MemoryBlobStore
from email_channels.errors import PermanentError, PoisonRecord, TransientError
from email_channels.producer import ProducerNotDurable, assert_durable, map_publish_error
from email_channels.settings import CommonSettings, KafkaSettings
from router.app import DurableProducer, RouterState, broker_urls, build_app
from router.settings import RouterSettings


def settings(**kafka: object) -> RouterSettings:
    return RouterSettings(
        kafka=KafkaSettings(topic_prefix="t1.", **kafka),  # type: ignore[arg-type]
        common=CommonSettings(),
    )


def test_every_bootstrap_server_becomes_a_broker_url() -> None:
    assert broker_urls("k1:9092, k2:9093,k3:9094") == [
        "kafka://k1:9092",
        "kafka://k2:9093",
        "kafka://k3:9094",
    ]
    with pytest.raises(ValueError, match="empty"):
        broker_urls(" , ")


async def test_the_app_is_durable_and_declares_no_topics() -> None:
    app = build_app(settings(bootstrap_servers="k1:9092,k2:9092"), blobs=MemoryBlobStore())
    assert app.conf.id == "t1.email-router"
    assert [str(url) for url in app.conf.broker] == ["kafka://k1:9092", "kafka://k2:9092"]
    assert app.conf.producer_acks == -1
    assert app.conf.topic_allow_declare is False
    assert app.conf.topic_disable_leader is True
    assert app.conf.consumer_auto_offset_reset == "earliest"
    assert app.conf.web_enabled is False
    assert app.conf.stream_wait_empty is False
    producer = app.producer
    assert isinstance(producer, DurableProducer)
    aiokafka_producer = producer._new_producer()
    try:
        assert_durable(aiokafka_producer)  # acks=all and idempotent, as asserted at start-up
        assert aiokafka_producer.client._bootstrap_servers == ["k1:9092", "k2:9092"]
    finally:
        await aiokafka_producer.stop()
    assert any(isinstance(dep, RouterState) for dep in app._children)
    [agent] = app.agents.values()
    assert set(agent.channel.topics) == {"t1.email.raw"}


async def test_a_plain_producer_would_fail_the_start_up_assertion() -> None:
    plain = AIOKafkaProducer(bootstrap_servers="k1:9092", acks=1)
    try:
        with pytest.raises(ProducerNotDurable):
            assert_durable(plain)
    finally:
        await plain.stop()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (KafkaConnectionError("down"), TransientError),
        (KafkaTimeoutError(), TransientError),
        (MessageSizeTooLargeError(), PermanentError),
    ],
)
def test_producer_errors_map_onto_the_taxonomy(error: Exception, expected: type) -> None:
    assert type(map_publish_error(error, "t")) is expected
    wrapped = ProducerSendError("faust wraps it")
    wrapped.__cause__ = error
    assert type(map_publish_error(wrapped, "t")) is expected


def test_non_kafka_errors_are_left_alone() -> None:
    poison = PoisonRecord("x")
    assert map_publish_error(poison, "t") is None
    bug = RuntimeError("bug")
    assert map_publish_error(bug, "t") is None
