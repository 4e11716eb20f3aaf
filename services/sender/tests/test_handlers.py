"""OutboundHandler under the shared retry policy, with an in-memory transport and publisher.

Each record goes through ``email_channels.consume.settle`` — the very function the lane
consumer uses, with the handler's give-up hook — so attempts, retries, give-ups and
dead-lettering behave as in production; only Kafka and the mail server are replaced by fakes of
our own interfaces.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from email_channels.blobstore import MemoryBlobStore
from email_channels.codec import encode
from email_channels.consume import RetryPolicy, settle
from email_channels.errors import ChannelMisconfigured, PoisonRecord, TransientError
from email_channels.events import (
    ChannelState,
    Contract,
    DeliveryEvent,
    DeliveryStatus,
    GraphOutbound,
)
from email_channels.headers import REPLAY_HEADER
from email_channels.hostpolicy import HostPolicy
from email_channels.topics import TopicNames
from sender.errors import DeliveryUncertain, MessageRejected, SendDeferred, ServerReply
from sender.handlers import OutboundHandler, delivery_outcome
from sender.ledger import DeliveryLedger, DeliveryOutcome
from sender.retries import RetrySchedule
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
        self.ledger = DeliveryLedger()
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
        self.dead.append((record, error, attempts))

    async def feed(
        self, value: Contract | bytes | None, *, topic: str = TOPICS.outbound, headers=()
    ) -> ConsumerRecord:
        raw = encode(value) if isinstance(value, Contract) else value
        record = ConsumerRecord(
            topic,
            0,
            next(self._offsets),
            0,
            0,
            b"conv-1",
            raw,
            None,
            6,
            len(raw or b""),
            tuple(headers),
        )
        await settle(
            record,
            self.handler,
            dead_letters=self,  # type: ignore[arg-type]
            policy=POLICY,
            stopping=asyncio.Event(),
            stage="sender",
            give_up=self.handler.gave_up,
        )
        return record

    def all_deliveries(self) -> list[DeliveryEvent]:
        return self.publisher.events(TOPICS.delivery)

    def deliveries(self) -> list[DeliveryEvent]:
        """Delivery events other than the intents (``sending``)."""
        return [e for e in self.all_deliveries() if e.status is not DeliveryStatus.SENDING]

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

    (composed,) = harness.transport.sent
    message = composed.message
    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.SENT
    assert event.outbound_id == outbound.outbound_id
    assert event.conversation_id == "conv-1"
    assert event.transport == "smtp"
    assert event.server_response == "250 2.0.0 Ok: queued"
    assert event.smtp_code == 250
    assert event.message_id == message["Message-ID"]
    assert composed.envelope.recipients == ("ada@customer.example",)
    assert harness.dead == []
    # the intent came first; both are keyed by outbound id
    intent, _sent = harness.all_deliveries()
    assert intent.status is DeliveryStatus.SENDING
    assert [key for _t, key, _e in harness.publisher.published[:2]] == [outbound.outbound_id] * 2


async def test_sent_event_carries_the_outbound_campaign_id(harness, make_outbound):
    """The sent event names the outbound's campaign (the router's thread affinity for replies)."""
    await harness.feed(make_outbound(campaign_id="camp-returns"))
    await harness.feed(make_outbound())

    with_campaign, without = harness.deliveries()
    assert with_campaign.status is DeliveryStatus.SENT
    assert with_campaign.campaign_id == "camp-returns"
    assert without.campaign_id is None


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


async def test_transient_failures_without_retry_topics_exhaust_into_failed_and_the_dlq(
    harness, make_outbound
):
    """After the last attempt: 'failed' with the server's last reply; record replayable."""
    reply = ServerReply(451, "4.3.0 Try again later")
    harness.transport.fail_with = [SendDeferred("later", reply=reply) for _ in range(3)]

    await harness.feed(make_outbound())

    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.FAILED
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
    harness.publisher.fail_with = [None, TransientError("broker not available")]

    await harness.feed(make_outbound())

    assert harness.transport.attempts == 1
    assert [e.status for e in harness.deliveries()] == [DeliveryStatus.SENT]


async def test_sent_event_is_still_published_when_the_loop_gives_up(harness, make_outbound):
    """Kafka down for every retry: the give-up path publishes 'sent', not a failure."""
    harness.publisher.fail_with = [None] + [TransientError("broker down")] * POLICY.attempts

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

    (composed,) = harness.transport.sent
    message = composed.message
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


# --- never twice: intents, takeovers, uncertain outcomes --------------------------------------


async def test_the_intent_is_published_before_the_message_goes_out(harness, make_outbound):
    """'sending' is acknowledged by Kafka before DATA; a failing intent sends nothing."""
    harness.publisher.fail_with = [TransientError("broker not available")] * POLICY.attempts

    await harness.feed(make_outbound())

    assert harness.transport.sent == []
    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.FAILED


async def test_an_intent_without_outcome_from_another_owner_is_reported_unknown(
    harness, make_outbound
):
    """A new owner that finds 'sending' without an outcome does not resend: 'unknown'."""
    outbound = make_outbound()
    await harness.ledger.observe(
        outbound.outbound_id,
        DeliveryOutcome(outbound_id=outbound.outbound_id, status=DeliveryStatus.SENDING),
    )

    await harness.feed(outbound)
    await harness.feed(outbound)  # re-delivered again: still nothing sent, no second status

    assert harness.transport.sent == []
    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.UNKNOWN
    assert "may have been delivered" in event.reason
    assert harness.dead == []


async def test_an_at_least_once_channel_sends_again_after_an_intent_without_outcome(
    publisher, make_channel, make_outbound
):
    """delivery_guarantee=at-least-once: the intent without outcome is sent again."""
    harness = Harness(publisher, [make_channel(delivery_guarantee="at-least-once")])
    outbound = make_outbound()
    await harness.ledger.observe(
        outbound.outbound_id,
        DeliveryOutcome(outbound_id=outbound.outbound_id, status=DeliveryStatus.SENDING),
    )

    await harness.feed(outbound)

    assert len(harness.transport.sent) == 1
    assert [e.status for e in harness.deliveries()] == [DeliveryStatus.SENT]


async def test_own_intent_followed_by_a_transient_failure_is_retried_not_unknown(
    harness, make_outbound
):
    """Our own intent, then a 4xx at DATA: the outcome is known here, so the retry sends."""
    harness.transport.fail_after_intent = [SendDeferred("451 later")]

    await harness.feed(make_outbound())

    assert len(harness.transport.sent) == 1
    assert [e.status for e in harness.deliveries()] == [DeliveryStatus.SENT]


async def test_connection_lost_during_data_is_unknown_and_never_retried(harness, make_outbound):
    """DeliveryUncertain (the server may have it): 'unknown', one try only, in the DLQ."""
    harness.transport.fail_after_intent = [DeliveryUncertain("lost during DATA")]

    await harness.feed(make_outbound())

    assert harness.transport.attempts == 1
    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.UNKNOWN
    assert len(harness.dead) == 1


async def test_failed_outbound_is_sent_again_only_by_a_dlq_replay(harness, make_outbound):
    """Settled 'failed' is skipped on re-delivery; the replay header sends it; sent stays sent."""
    outbound = make_outbound()
    await harness.ledger.observe(
        outbound.outbound_id,
        DeliveryOutcome(outbound_id=outbound.outbound_id, status=DeliveryStatus.FAILED),
    )

    await harness.feed(outbound)
    assert harness.transport.sent == []

    await harness.feed(outbound, headers=[(REPLAY_HEADER, b"1")])
    await harness.feed(outbound, headers=[(REPLAY_HEADER, b"1")])
    assert len(harness.transport.sent) == 1
    assert [e.status for e in harness.deliveries()] == [DeliveryStatus.SENT]


# --- retry topics --------------------------------------------------------------------------


def with_retries(harness: Harness, delays=(60.0, 600.0)) -> RetrySchedule:
    schedule = RetrySchedule(TOPICS, delays)
    harness.handler._retries = schedule
    return schedule


async def test_a_transient_failure_goes_to_the_next_retry_topic_with_a_deferred_event(
    harness, make_outbound
):
    """4xx: the record is re-published unchanged to retry level 1, due in 60 s; 'deferred'."""
    with_retries(harness)
    reply = ServerReply(451, "4.7.1 Greylisted")
    harness.transport.fail_with = [SendDeferred("later", reply=reply)]
    outbound = make_outbound()

    before = time.time()
    record = await harness.feed(outbound)

    ((topic, key, value, headers),) = harness.publisher.raw
    assert topic == f"{TOPICS.outbound}.retry.1"
    assert (key, value) == (record.key, record.value)
    names = dict(headers)
    assert names["retry-level"] == b"1"
    assert names["original-topic"] == TOPICS.outbound.encode()
    due_ms = int(names["retry-due-ms"])  # whole milliseconds: compare at that precision
    assert int(before * 1000) + 60_000 <= due_ms <= int(time.time() * 1000) + 60_000
    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.DEFERRED
    assert (event.retry_level, event.smtp_code) == (1, 451)
    assert harness.dead == []
    assert harness.transport.attempts == 1  # no in-place retry of a send


async def test_after_the_last_retry_level_the_outbound_fails(harness, make_outbound):
    """At the last level a transient failure is final: 'failed' with every try counted."""
    schedule = with_retries(harness)
    harness.transport.fail_with = [SendDeferred("later")] * POLICY.attempts
    outbound = make_outbound()
    headers = [("retry-level", b"2"), ("retry-due-ms", b"0"), ("original-topic", b"x")]

    await harness.feed(outbound, topic=schedule.topic(2), headers=headers)

    assert harness.publisher.raw == []
    (event,) = harness.deliveries()
    assert event.status is DeliveryStatus.FAILED
    assert event.attempt == 2 + POLICY.attempts
    assert len(harness.dead) == 1


async def test_a_redelivered_record_already_handed_to_a_retry_level_is_skipped(
    harness, make_outbound
):
    """Crash after scheduling the retry but before the commit: the original is not resent."""
    with_retries(harness)
    outbound = make_outbound()
    await harness.ledger.observe(
        outbound.outbound_id,
        DeliveryOutcome(
            outbound_id=outbound.outbound_id, status=DeliveryStatus.DEFERRED, retry_level=1
        ),
    )

    await harness.feed(outbound)  # level 0

    assert harness.transport.sent == []
    assert harness.publisher.raw == []


def test_retry_schedule_due_times_come_from_the_record_headers():
    """First deliveries are due at once; retry records when their header says."""
    schedule = RetrySchedule(TOPICS, (1.0,))
    plain = ConsumerRecord("t", 0, 0, 0, 0, b"k", b"v", None, 1, 1, ())
    later = ConsumerRecord("t", 0, 0, 0, 0, b"k", b"v", None, 1, 1, (("retry-due-ms", b"5000"),))
    assert schedule.due(plain) is None
    assert schedule.due(later) == 5.0
    assert schedule.level(plain) == 0
    assert not schedule.has_next(1)
    assert schedule.has_next(0)


class SlowTransport(MemoryTransport):
    """MemoryTransport whose send takes a moment (other records run meanwhile)."""

    async def send(self, email, *, before_data=None):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.02)
        return await super().send(email, before_data=before_data)


async def test_two_records_of_one_outbound_id_at_once_send_it_once(harness, make_outbound):
    """The same outbound id in two records handled at the same moment (two lanes): the second
    waits for the first and then finds it sent; the message goes out once, nothing is left
    held."""
    harness.transport = SlowTransport()
    outbound = make_outbound()
    await asyncio.gather(harness.feed(outbound), harness.feed(outbound))

    assert len(harness.transport.sent) == 1
    assert [e.status for e in harness.deliveries()] == [DeliveryStatus.SENT]
    assert harness.handler._busy == {}
