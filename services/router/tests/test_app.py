"""The wiring, checked without a broker: the configuration the guarantees rest on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from email_channels.blobstore import MemoryBlobStore
from email_channels.events import DeliveryEvent, DeliveryStatus
from email_channels.producer import assert_durable
from router.app import RouterApp
from router.delivery_marks import sent_mark
from router.settings import RouterSettings

if TYPE_CHECKING:
    import pytest


def settings(monkeypatch: pytest.MonkeyPatch) -> RouterSettings:
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "t.")
    monkeypatch.setenv("ROUTER_INSTANCE_ID", "router-0")
    return RouterSettings()


async def test_the_producer_is_transactional_durable_and_named_after_the_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """acks=all + idempotence (asserted) and a transactional id stable across restarts."""
    app = RouterApp(settings(monkeypatch), blobs=MemoryBlobStore())
    producer = app._transactional_producer()
    assert_durable(producer)
    assert app.transactional_id == "t.email-router-router-0"
    assert producer._txn_manager.transactional_id == "t.email-router-router-0"
    await producer.stop()


async def test_the_raw_consumer_reads_committed_and_never_auto_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Offsets move only inside routing transactions; aborted output is never read."""
    app = RouterApp(settings(monkeypatch), blobs=MemoryBlobStore())
    consumer = app._raw_consumer()
    assert consumer._enable_auto_commit is False
    assert consumer._isolation_level == "read_committed"
    assert consumer._group_id == "t.email-router"
    await consumer.stop()


def test_only_sent_mail_with_a_message_id_leaves_a_mark() -> None:
    """Replies can only follow mail that went out; failed or rejected outbounds leave none."""
    sent = DeliveryEvent(
        outbound_id="o-1",
        channel_id="ch-1",
        conversation_id="conv-1",
        campaign_id="sales",
        status=DeliveryStatus.SENT,
        transport="smtp",
        message_id="<o-1@shop.example>",
    )
    found = sent_mark(sent)
    assert found is not None
    key, mark = found
    assert key == "sent/o-1"
    assert (mark.kind, mark.campaign_id, mark.conversation_id) == ("sent", "sales", "conv-1")
    assert sent_mark(sent.model_copy(update={"status": DeliveryStatus.REJECTED})) is None
    assert sent_mark(sent.model_copy(update={"message_id": None})) is None


def test_readiness_waits_for_the_config_views_before_the_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before run() has read anything, /readyz names the first view not caught up; the group
    is only asked about once every view (channels, filters, marks) is."""
    app = RouterApp(settings(monkeypatch), blobs=MemoryBlobStore())
    assert app.not_ready_reason() == "t.email.channels not caught up yet"
    for view in (app.channels, app.filters, app.state):
        view._caught_up.set()
    assert app.not_ready_reason() == "consumer of group t.email-router not started"
