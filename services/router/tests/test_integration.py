"""The router as a process (``python -m router``) against real Apache Kafka.

Channel config and fetched mail are published to this test's own topics; what the router
writes to email.routed and email.dlq is read back. Nothing about Kafka is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import uuid
from email import message_from_bytes
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import pytest

from email_channels.blobstore import BlobRef, LocalBlobStore
from email_channels.codec import decode, header
from email_channels.consume import make_consumer
from email_channels.events import (
    ChannelConfig,
    ChannelFilters,
    DeadLetter,
    DeliveryEvent,
    DeliveryStatus,
    Filter,
    RawEmail,
    RoutedEmail,
    SourceIdentity,
)
from email_channels.producer import EventProducer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from aiokafka import AIOKafkaConsumer

    from email_channels.settings import KafkaSettings

pytestmark = pytest.mark.integration


class RouterProcess:
    """``python -m router`` with this test's settings; output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.child: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "router"], env=self.env, stdout=log, stderr=log
            )

    def check_alive(self) -> None:
        assert self.child is not None
        if self.child.poll() is not None:
            raise AssertionError(f"router exited with {self.child.returncode}:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        assert self.child is not None
        if self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)
        try:
            return self.child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()
            raise AssertionError(f"router did not stop on SIGTERM:\n{self.tail()}") from None

    def tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def router_env(kafka_settings: KafkaSettings, tmp_path: Path) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "KAFKA_PARTITIONS": str(kafka_settings.partitions),
        "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{tmp_path / 'blobs'}",
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
        "ROUTER_INSTANCE_ID": "router-0",
        "ROUTER_SESSION_TIMEOUT_S": "6",
        "ROUTER_RETRY_MAX_BACKOFF_SECONDS": "1",
    }


@pytest.fixture
def router(router_env: dict[str, str], tmp_path: Path) -> Iterator[RouterProcess]:
    process = RouterProcess(router_env, tmp_path / "router.log")
    process.start()
    try:
        yield process
    finally:
        if process.child is not None and process.child.poll() is None:
            process.child.kill()
            process.child.wait()


def customer_mail(subject: str, *, reply_to: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = "Alice Customer <alice@customer.example>"
    message["To"] = "support@shop.example"
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@customer.example>"
    if reply_to is not None:
        message["In-Reply-To"] = reply_to
        message["References"] = reply_to
    message.set_content("Where is my order?\n")
    message.add_attachment(b"%PDF-1.4 receipt", maintype="application", subtype="pdf",
                           filename="receipt.pdf")  # fmt: skip
    return message.as_bytes()


def raw_email(channel_id: str, mime: bytes, uid: int) -> RawEmail:
    return RawEmail(
        email_id=f"e-{uuid.uuid4().hex[:12]}",
        channel_id=channel_id,
        source=SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=1, uid=uid),
        size=len(mime),
        sha256=hashlib.sha256(mime).hexdigest(),
        raw_mime=mime,
    )


def email_message_id(raw: RawEmail) -> str:
    return str(message_from_bytes(raw.raw_mime or b"")["Message-ID"])


async def collect(
    consumer: AIOKafkaConsumer,
    router: RouterProcess,
    done: Any,
    *,
    timeout: float = 90.0,
    records: list[Any] | None = None,
) -> list[Any]:
    """Read records until ``done(records)`` or the timeout; the router must stay alive."""
    records = [] if records is None else records
    deadline = asyncio.get_running_loop().time() + timeout
    while not done(records):
        router.check_alive()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out with {len(records)} records:\n{router.tail()}")
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(batch)
    return records


async def test_mail_is_routed_and_garbage_is_dead_lettered(  # noqa: PLR0915 - one story
    kafka_settings: KafkaSettings, router: RouterProcess, tmp_path: Path
) -> None:
    """Default and filter routing, dead letters with reasons, the router keeps going; SIGTERM
    stops it cleanly and a restarted router continues after what was already routed."""
    topics = kafka_settings.topics
    channel = ChannelConfig(
        id="ch-1",
        name="Support",
        email_address="support@shop.example",
        default_campaign_id="support",
        enabled=True,
    )
    filters = ChannelFilters(
        channel_id="ch-1",
        filters=[Filter(id="f-billing", campaign_id="billing", subject_keywords=["invoice"])],
    )
    first = raw_email("ch-1", customer_mail("Where is my order?"), uid=1)
    billing = raw_email("ch-1", customer_mail("Invoice 42 is wrong"), uid=2)
    unknown = raw_email("ch-nobody", customer_mail("Hello?"), uid=3)

    async with EventProducer(kafka_settings, client_id="test-config") as producer:
        # The router is already starting: the channel is created "a moment ago" for it.
        await producer.publish(topics.channels, channel.id, channel)
        await producer.publish(topics.filters, channel.id, filters)
        await producer.publish(topics.raw, "ch-1", first)
        await producer.publish_raw(topics.raw, b"ch-1", b"{not json", [])
        await producer.publish(topics.raw, "ch-nobody", unknown)
        await producer.publish(topics.raw, "ch-1", billing)

    routed_consumer = make_consumer(kafka_settings, topics.routed, group_id=None, client_id="t-r")
    dlq_consumer = make_consumer(kafka_settings, topics.dlq, group_id=None, client_id="t-d")
    await routed_consumer.start()
    await dlq_consumer.start()
    try:
        routed_records = await collect(routed_consumer, router, lambda r: len(r) >= 2)
        dead_records = await collect(dlq_consumer, router, lambda r: len(r) >= 2)

        routed = {decode(RoutedEmail, r.value).email_id: r for r in routed_records}
        assert set(routed) == {first.email_id, billing.email_id}

        record = routed[first.email_id]
        event = decode(RoutedEmail, record.value)
        assert record.key.decode() == event.conversation_id
        assert header(record.headers, "campaign-id") == "support"
        assert header(record.headers, "schema") == "RoutedEmail/v1"
        assert event.campaign_id == "support"
        assert event.reason.kind == "default"
        assert event.channel_id == "ch-1"
        assert event.subject == "Where is my order?"
        assert event.from_ is not None
        assert event.from_.address == "alice@customer.example"
        assert event.text_body == "Where is my order?\n"
        assert event.source.uid == 1
        blobs = LocalBlobStore(tmp_path / "blobs")
        assert event.raw_ref == BlobRef.of(first.raw_mime or b"")
        assert await blobs.get(event.raw_ref) == first.raw_mime
        [attachment] = event.attachments
        assert attachment.filename == "receipt.pdf"
        assert attachment.blob is not None
        assert await blobs.get(attachment.blob) == b"%PDF-1.4 receipt"

        filtered = decode(RoutedEmail, routed[billing.email_id].value)
        assert filtered.campaign_id == "billing"
        assert filtered.reason.filter_id == "f-billing"
        assert header(routed[billing.email_id].headers, "campaign-id") == "billing"

        letters = {r.key: decode(DeadLetter, r.value) for r in dead_records}
        garbage, nobody = letters[b"ch-1"], letters[b"ch-nobody"]
        assert garbage.stage == "router"
        assert garbage.error_kind == "PoisonRecord"
        assert garbage.original_value == b"{not json"
        assert garbage.source_topic == topics.raw
        assert nobody.error_kind == "UnknownChannel"
        assert "ch-nobody" in nobody.error_message

        assert router.stop() == 0, router.tail()

        # A restarted router resumes after the committed offsets: only new mail is routed.
        router.start()
        later = raw_email("ch-1", customer_mail("One more question"), uid=4)
        async with EventProducer(kafka_settings, client_id="test-later") as producer:
            await producer.publish(topics.raw, "ch-1", later)
        more = await collect(
            routed_consumer,
            router,
            lambda r: any(decode(RoutedEmail, x.value).email_id == later.email_id for x in r),
        )
        await asyncio.sleep(2)  # a re-delivery of earlier mail would show up by now
        more.extend(
            r for batch in (await routed_consumer.getmany(timeout_ms=500)).values() for r in batch
        )
        assert [decode(RoutedEmail, r.value).email_id for r in more] == [later.email_id]
        assert router.stop() == 0, router.tail()
    finally:
        await routed_consumer.stop()
        await dlq_consumer.stop()


async def test_a_shutdown_while_retrying_loses_no_mail(
    kafka_settings: KafkaSettings, router_env: dict[str, str], tmp_path: Path
) -> None:
    """The blob store is down: the router retries (no dead letter); SIGTERM mid-retry must not
    commit the unrouted mail, so a router started once the store is back routes it."""
    topics = kafka_settings.topics
    broken = tmp_path / "not-a-directory"
    broken.write_bytes(b"")  # the blob store's root is a file: every write fails (transient)
    channel = ChannelConfig(id="ch-1", name="Support", default_campaign_id="support")
    mail = raw_email("ch-1", customer_mail("Stuck for a while"), uid=1)
    async with EventProducer(kafka_settings, client_id="test-config") as producer:
        await producer.publish(topics.channels, channel.id, channel)
        await producer.publish(topics.raw, "ch-1", mail)

    failing = RouterProcess(
        {**router_env, "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{broken}"},
        tmp_path / "failing.log",
    )
    failing.start()
    try:
        for _ in range(200):
            failing.check_alive()
            # blob writes fail at the flush before the commit: the whole batch is retried
            if "batch is aborted and routed again" in failing.log_path.read_text(errors="replace"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the router never retried:\n{failing.tail()}")
        assert failing.stop() == 0, failing.tail()
    finally:
        if failing.child is not None and failing.child.poll() is None:
            failing.child.kill()

    healthy = RouterProcess(router_env, tmp_path / "healthy.log")
    healthy.start()
    routed_consumer = make_consumer(kafka_settings, topics.routed, group_id=None, client_id="t-r")
    dlq_consumer = make_consumer(kafka_settings, topics.dlq, group_id=None, client_id="t-d")
    await routed_consumer.start()
    await dlq_consumer.start()
    try:
        [record] = await collect(routed_consumer, healthy, lambda r: len(r) >= 1)
        assert decode(RoutedEmail, record.value).email_id == mail.email_id
        assert await dlq_consumer.getmany(timeout_ms=1000) == {}
        assert healthy.stop() == 0, healthy.tail()
    finally:
        await routed_consumer.stop()
        await dlq_consumer.stop()
        if healthy.child is not None and healthy.child.poll() is None:
            healthy.child.kill()


async def test_replies_follow_mail_routed_and_sent_before_filters(
    kafka_settings: KafkaSettings, router: RouterProcess
) -> None:
    """A reply to a routed mail stays in its campaign although a filter matches it; a reply to
    mail the sender sent (email.delivery) goes to the outbound's campaign and conversation;
    a re-fetch of the first mail is dropped."""
    topics = kafka_settings.topics
    channel = ChannelConfig(id="ch-1", name="Support", default_campaign_id="support")
    filters = ChannelFilters(
        channel_id="ch-1",
        filters=[Filter(id="f-billing", campaign_id="billing", subject_keywords=["invoice"])],
    )
    first = raw_email("ch-1", customer_mail("Where is my order?"), uid=1)
    first_id = email_message_id(first)
    reply = raw_email("ch-1", customer_mail("Re: invoice", reply_to=first_id), uid=2)
    sent = DeliveryEvent(
        outbound_id="out-1",
        channel_id="ch-1",
        conversation_id="conv-sales",
        campaign_id="sales",
        status=DeliveryStatus.SENT,
        transport="smtp",
        message_id="<out-1@shop.example>",
    )
    answer = raw_email("ch-1", customer_mail("Invoice?", reply_to="<out-1@shop.example>"), uid=3)
    async with EventProducer(kafka_settings, client_id="test-config") as producer:
        await producer.publish(topics.channels, channel.id, channel)
        await producer.publish(topics.filters, channel.id, filters)
        await producer.publish(topics.delivery, sent.outbound_id, sent)
        await producer.publish(topics.raw, "ch-1", first)
        await producer.publish(topics.raw, "ch-1", first)  # fetched twice
        await producer.publish(topics.raw, "ch-1", reply)

    consumer = make_consumer(kafka_settings, topics.routed, group_id=None, client_id="t-r")
    await consumer.start()
    try:
        records = await collect(consumer, router, lambda r: len(r) >= 2)
        # The sent mark goes email.delivery -> email.router-state -> the router's table
        # asynchronously: the answer is fetched once the mark is on the topic.
        state = make_consumer(kafka_settings, topics.router_state, group_id=None, client_id="t-s")
        await state.start()
        try:
            await collect(state, router, lambda r: any(x.key == b"sent/out-1" for x in r))
        finally:
            await state.stop()
        await asyncio.sleep(1.5)  # the router's reader polls the topic continuously
        async with EventProducer(kafka_settings, client_id="test-answer") as producer:
            await producer.publish(topics.raw, "ch-1", answer)
        records = await collect(consumer, router, lambda r: len(r) >= 3, records=records)
        await asyncio.sleep(1)
        records.extend(
            r for batch in (await consumer.getmany(timeout_ms=500)).values() for r in batch
        )
    finally:
        await consumer.stop()
    routed = {e.email_id: e for e in (decode(RoutedEmail, r.value) for r in records)}
    assert len(records) == 3, "the re-fetched mail must not be routed again"
    original, threaded, answered = (
        routed[first.email_id],
        routed[reply.email_id],
        routed[answer.email_id],
    )
    assert (threaded.campaign_id, threaded.reason.kind) == ("support", "thread")
    assert threaded.conversation_id == original.conversation_id
    assert (answered.campaign_id, answered.conversation_id) == ("sales", "conv-sales")
    assert answered.reason.kind == "thread"
