"""OutboundHandler under the shared retry policy, with an in-memory transport and publisher.

Each record goes through ``email_channels.consume.handle_with_policy`` — the very function the
consume loop uses — so retries, give-ups and dead-lettering behave as in production; only
Kafka and the mail server are replaced by fakes of our own interfaces.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from email_channels.blobstore import MemoryBlobStore
from email_channels.codec import encode
from email_channels.consume import RetryPolicy, handle_with_policy
from email_channels.errors import ChannelMisconfigured, PoisonRecord, TransientError
from email_channels.events import (
    ChannelState,
    Contract,
    DeliveryEvent,
    DeliveryStatus,
    GraphOutbound,
)
from email_channels.hostpolicy import HostPolicy
from email_channels.topics import TopicNames
from sender.errors import MessageRejected, SendDeferred, ServerReply
from sender.handlers import OutboundHandler, delivery_outcome
from sender.ledger import DeliveryOutcome, SentLedger
from sender.transports import ChannelTransports, MemoryTransport

TOPICS = TopicNames("t.")
POLICY = RetryPolicy(attempts=3, first_backoff=0.001, max_backoff=0.001)


class FakeChannels(dict):  # type: ignore[type-arg]
    """The channels view: a dict that has read everything already."""

    catch_ups = 0

    async def catch_up(self, *, timeout: float = 10.0) -> None:
        self.catch_ups += 1


class Harness:
    """The handler, its fakes, and a dead-letter stand-in that reports like production."""

    def __init__(self, publisher, channels) -> None:
        self.publisher = publisher
        self.channels = FakeChannels({c.id: c for c in channels})
        self.transport = MemoryTransport()
        self.ledger = SentLedger()
        self.blobs = MemoryBlobStore()
        self.dead: list[tuple[ConsumerRecord, BaseException, int]] = []
        self.handler = OutboundHandler(
            channels=self.channels,
            transports=lambda _channel: self.transport,
            publisher=publisher,
            topics=TOPICS,
            ledger=self.ledger,
            blobs=self.blobs,
            max_attachment_bytes=1024,
        )
        self._offsets = itertools.count()

    async def send(self, record, error, *, attempts: int = 1) -> None:  # DeadLetters.send
        await self.handler.gave_up(record, error, attempts)
        self.dead.append((record, error, attempts))

    async def feed(self, value: Contract | bytes | None) -> ConsumerRecord:
        raw = encode(value) if isinstance(value, Contract) else value
        record = ConsumerRecord(
            TOPICS.outbound,
            0,
            next(self._offsets),
            0,
            0,
            b"conv-1",
            raw,
            None,
            6,
            len(raw or b""),
            (),
        )
        await handle_with_policy(
            record,
            self.handler,
            dead_letters=self,  # type: ignore[arg-type]
            policy=POLICY,
            stopping=asyncio.Event(),
            stage="sender",
        )
        return record

    def deliveries(self) -> list[DeliveryEvent]:
        return self.publisher.events(TOPICS.delivery)

    def statuses(self) -> list[Any]:
        return self.publisher.events(TOPICS.channel_status)


@pytest.fixture
def harness(publisher, make_channel):
    return Harness(
        publisher,
        [
            make_channel(),
            make_channel(id="ch-off", enabled=False),
            make_channel(id="ch-noout", outbound=None),
        ],
    )


async def test_sent_publishes_delivery_with_response_and_message_id(harness, make_outbound):
    outbound = make_outbound()
    await harness.feed(outbound)

    ((message, envelope),) = harness.transport.sent
    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.SENT
    assert event.outbound_id == outbound.outbound_id
    assert event.conversation_id == "conv-1"
    assert event.transport == "smtp"
    assert event.server_response == "250 2.0.0 Ok: queued"
    assert event.smtp_code == 250
    assert event.message_id == message["Message-ID"]
    assert envelope.recipients == ("ada@customer.example",)
    assert harness.dead == []
    # the delivery is keyed by outbound id
    assert harness.publisher.published[0][1] == outbound.outbound_id


async def test_first_success_reports_the_channel_active_once(harness, make_outbound):
    await harness.feed(make_outbound())
    await harness.feed(make_outbound())

    (status,) = harness.statuses()
    assert status.state is ChannelState.ACTIVE
    assert status.direction == "outbound"
    assert status.last_success_at is not None


async def test_same_outbound_id_is_sent_once(harness, make_outbound):
    outbound = make_outbound()
    await harness.feed(outbound)
    await harness.feed(outbound)

    assert len(harness.transport.sent) == 1
    assert [e.status for e in harness.deliveries()] == [DeliveryStatus.SENT]


async def test_ids_sent_earlier_are_learned_from_the_delivery_topic(harness, make_outbound):
    """At start-up the ledger replays email.delivery; a 'sent' id there is not sent again."""
    outbound = make_outbound()
    await harness.ledger.observe(
        outbound.outbound_id,
        DeliveryOutcome(outbound_id=outbound.outbound_id, status=DeliveryStatus.SENT),
    )
    await harness.ledger.observe(
        "other", DeliveryOutcome(outbound_id="other", status=DeliveryStatus.DEFERRED)
    )

    await harness.feed(outbound)

    assert harness.transport.sent == []
    assert harness.deliveries() == []
    assert "other" not in harness.ledger


@pytest.mark.parametrize(
    ("channel_id", "reason"),
    [
        ("ch-missing", "channel ch-missing does not exist"),
        ("ch-off", "channel ch-off is disabled"),
        ("ch-noout", "channel ch-noout has no outbound settings"),
    ],
)
async def test_unusable_channel_fails_with_a_clear_reason(
    harness, make_outbound, channel_id, reason
):
    await harness.feed(make_outbound(channel_id=channel_id))

    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.FAILED
    assert event.reason == reason
    assert harness.transport.attempts == 0
    assert len(harness.dead) == 1  # kept in email.dlq, replayable once the channel is fixed


async def test_a_channel_created_a_moment_ago_is_looked_up_again(
    harness, make_channel, make_outbound
):
    """A miss makes the view catch up once before the outbound is failed."""

    class LateChannels(FakeChannels):
        async def catch_up(self, *, timeout: float = 10.0) -> None:
            await super().catch_up(timeout=timeout)
            self["ch-new"] = make_channel(id="ch-new")

    late = LateChannels(harness.channels)
    harness.handler._channels = late
    await harness.feed(make_outbound(channel_id="ch-new"))

    assert late.catch_ups == 1
    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.SENT


async def test_graph_channel_without_a_secret_keyring_fails_at_step_token(
    publisher, make_channel, make_outbound, unit_secret_box
):
    graph = GraphOutbound(
        tenant_id="t",
        client_id="c",
        client_secret=unit_secret_box.encrypt("s"),
        mailbox="support@shop.example",
    )
    harness = Harness(publisher, [make_channel(outbound=graph)])
    transports = ChannelTransports(
        host_policy=HostPolicy(), secrets=None, ca_file=None, smtp_timeout=1
    )
    harness.handler._transports = transports

    await harness.feed(make_outbound())
    await transports.aclose()

    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.FAILED
    assert event.transport == "graph"
    assert "step token" in event.reason
    assert "EMAIL_CHANNELS_SECRET_KEYS" in event.reason


async def test_5xx_is_rejected_with_code_and_text(harness, make_outbound):
    reply = ServerReply(550, "5.1.1 No such user")
    harness.transport.fail_with = [MessageRejected("rejected", reply=reply)]

    await harness.feed(make_outbound())

    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.REJECTED
    assert event.smtp_code == 550
    assert event.server_response == "550 5.1.1 No such user"
    assert harness.transport.attempts == 1  # a permanent answer is not retried


async def test_transient_failure_is_retried_then_sent(harness, make_outbound):
    harness.transport.fail_with = [TransientError("connection reset")]

    await harness.feed(make_outbound())

    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.SENT
    assert event.attempt == 2
    assert harness.dead == []


async def test_transient_failures_exhaust_into_deferred_and_the_dlq(harness, make_outbound):
    """After the last attempt: 'deferred' with the server's last reply; record replayable."""
    reply = ServerReply(451, "4.3.0 Try again later")
    harness.transport.fail_with = [SendDeferred("later", reply=reply) for _ in range(3)]

    await harness.feed(make_outbound())

    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.DEFERRED
    assert event.attempt == POLICY.attempts
    assert event.smtp_code == 451
    assert "email.dlq" in event.reason
    assert harness.transport.attempts == POLICY.attempts
    ((_record, error, attempts),) = harness.dead
    assert error.retriable
    assert attempts == POLICY.attempts


async def test_auth_failure_fails_the_delivery_and_marks_the_channel_inactive(
    harness, make_outbound
):
    harness.transport.fail_with = [ChannelMisconfigured("535 bad credentials", step="auth")]

    await harness.feed(make_outbound())

    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.FAILED
    assert "step auth" in event.reason
    (status,) = harness.statuses()
    assert status.state is ChannelState.INACTIVE
    assert status.direction == "outbound"
    assert status.step == "auth"
    assert harness.publisher.published[-1][1] == "ch-1/outbound"

    # Once it works again the channel is reported active again.
    await harness.feed(make_outbound())
    assert [s.state for s in harness.statuses()] == [ChannelState.INACTIVE, ChannelState.ACTIVE]


async def test_crlf_in_subject_is_rejected_and_dead_lettered(harness, make_outbound):
    """Header injection: the record never reaches the transport; the campaign learns why."""
    valid = make_outbound()
    payload = valid.model_dump(mode="json", by_alias=True)
    payload["subject"] = "Hi\r\nBcc: everyone@victim.example"
    raw = json.dumps(payload).encode()

    await harness.feed(raw)

    assert harness.transport.attempts == 0
    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.REJECTED
    assert event.outbound_id == valid.outbound_id
    assert "subject" in event.reason
    assert "CR or LF" in event.reason
    ((_record, error, _attempts),) = harness.dead
    assert isinstance(error, PoisonRecord)


async def test_garbage_goes_to_the_dlq_without_a_delivery_event(harness):
    await harness.feed(b"\x00not json")
    await harness.feed(None)

    assert harness.deliveries() == []
    assert [type(e) for _r, e, _a in harness.dead] == [PoisonRecord, PoisonRecord]


async def test_sent_event_lost_on_publish_is_republished_not_resent(harness, make_outbound):
    """Kafka hiccup after the server accepted: retry publishes 'sent', never re-sends."""
    harness.publisher.fail_with = [TransientError("broker not available")]

    await harness.feed(make_outbound())

    assert harness.transport.attempts == 1
    assert [e.status for e in harness.deliveries()] == [DeliveryStatus.SENT]


async def test_sent_event_is_still_published_when_the_loop_gives_up(harness, make_outbound):
    """Kafka down for every retry: the give-up path publishes 'sent', not a failure."""
    harness.publisher.fail_with = [TransientError("broker not available")] * POLICY.attempts

    await harness.feed(make_outbound())

    assert harness.transport.attempts == 1
    assert [e.status for e in harness.deliveries()] == [DeliveryStatus.SENT]
    assert len(harness.dead) == 1  # the record itself is dead-lettered as usual


async def test_a_later_failure_of_a_sent_id_is_not_reported(harness, make_outbound):
    """A corrupted copy of an outbound already sent must not turn its status into 'rejected'."""
    outbound = make_outbound()
    await harness.feed(outbound)
    payload = outbound.model_dump(mode="json", by_alias=True) | {"subject": "x\ny"}

    await harness.feed(json.dumps(payload).encode())

    assert [e.status for e in harness.deliveries()] == [DeliveryStatus.SENT]
    assert len(harness.dead) == 1


async def test_attachments_from_inline_content_and_blob_store(harness, make_outbound):
    ref = await harness.blobs.put(b"blob bytes")
    outbound = make_outbound(
        attachments=[
            {"filename": "a.txt", "content_type": "text/plain", "content": "aW5saW5l"},
            {"filename": "b.bin", "blob": ref.model_dump()},
        ]
    )
    await harness.feed(outbound)

    ((message, _envelope),) = harness.transport.sent
    contents = {p.get_filename(): p.get_payload(decode=True) for p in message.iter_attachments()}
    assert contents == {"a.txt": b"inline", "b.bin": b"blob bytes"}


async def test_attachments_over_the_limit_are_rejected_before_reading_blobs(harness, make_outbound):
    ref = await harness.blobs.put(b"x" * 2000)
    harness.blobs.blobs.clear()  # reading it would fail: the limit must be checked first

    await harness.feed(make_outbound(attachments=[{"filename": "big", "blob": ref.model_dump()}]))

    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.REJECTED
    assert "above the limit of 1024 bytes" in event.reason
    assert harness.transport.attempts == 0


def test_unexpected_errors_fail_without_leaking_details():
    outcome = delivery_outcome(KeyError("internal state"))
    assert outcome.status is DeliveryStatus.FAILED
    assert outcome.reason == "internal error (KeyError)"
