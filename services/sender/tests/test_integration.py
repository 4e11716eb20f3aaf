"""The sender against real Apache Kafka and a real SMTP server (aiosmtpd: STARTTLS + AUTH).

Each test has its own topic prefix (so its own topics and consumer group) and its own
recipient addresses on the session's SMTP server, so tests never see each other's mail.
Nothing is mocked: records go through the broker, mail through TLS and AUTH.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any, Self

import aiosmtplib
import pytest
from aiokafka import AIOKafkaConsumer

from devstack.smtp import SmtpServer
from email_channels.codec import decode, encode_key
from email_channels.errors import ChannelMisconfigured
from email_channels.events import (
    ChannelConfig,
    ChannelState,
    ChannelStatus,
    DeadLetter,
    DeliveryEvent,
    DeliveryStatus,
    OutboundEmail,
    SmtpOutbound,
    TlsMode,
)
from email_channels.headers import LOOP_HEADER
from email_channels.hostpolicy import HostPolicy, HostRefused
from email_channels.producer import EventProducer
from email_channels.settings import CommonSettings
from email_channels.tls import client_context
from sender.app import SenderApp
from sender.compose import compose, make_message_id
from sender.errors import MessageRejected, SendDeferred
from sender.settings import SenderSettings
from sender.transports.pipelining import PipelinedConnection
from sender.transports.smtp import SmtpTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from devstack.smtp import ReceivedMail

pytestmark = pytest.mark.integration

CHANNEL_ADDRESS = "support@shop.example"


class TopicTail:
    """Every record of a topic, from the beginning, as it arrives."""

    def __init__(self, kafka_settings, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic,
            **kafka_settings.client_kwargs(),
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.records: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        async for record in self._consumer:
            self.records.append(record)

    def events(self, model):
        return [decode(model, r.value) for r in self.records if r.value is not None]


@pytest.fixture
def settings(kafka_settings, pki, secret_keys, tmp_path) -> SenderSettings:
    return SenderSettings(
        kafka=kafka_settings,
        common=CommonSettings(
            allowed_hosts="127.0.0.1",
            ca_file=pki.ca_cert,
            secret_keys=secret_keys,
            blob_store_url=f"file://{tmp_path}/blobs",
        ),
        smtp_timeout=10,
        retry_attempts=2,
        retry_first_backoff=0.05,
        retry_max_backoff=0.2,
        retry_delays_s=(0.5, 1.0),
    )


@pytest.fixture
async def producer(kafka_settings) -> AsyncIterator[EventProducer]:
    async with EventProducer(kafka_settings, client_id="sender-test") as producer:
        yield producer


@pytest.fixture
async def deliveries(kafka_settings) -> AsyncIterator[TopicTail]:
    async with TopicTail(kafka_settings, kafka_settings.topics.delivery) as tail:
        yield tail


@pytest.fixture
async def dead_letters(kafka_settings) -> AsyncIterator[TopicTail]:
    async with TopicTail(kafka_settings, kafka_settings.topics.dlq) as tail:
        yield tail


@contextlib.asynccontextmanager
async def running(settings: SenderSettings) -> AsyncIterator[SenderApp]:
    """The sender service in this event loop, ready (views caught up) when entered."""
    app = SenderApp(settings)
    stopping = asyncio.Event()
    task = asyncio.create_task(app.run(stopping))
    ready = asyncio.create_task(app.ready.wait())
    await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # start-up failed: raise its error here
    assert app.ready.is_set(), "sender not ready within 60 s"
    try:
        yield app
    finally:
        stopping.set()
        ready.cancel()
        await asyncio.wait_for(task, timeout=30)


def smtp_channel(secret_box, smtp_server, *, password: str = "sender-secret", **extra: Any):
    return ChannelConfig(
        id=f"ch-{uuid.uuid4().hex[:8]}",
        name="Support",
        email_address=CHANNEL_ADDRESS,
        default_campaign_id="camp-1",
        enabled=True,
        outbound=SmtpOutbound(
            host=smtp_server.host,
            port=smtp_server.port,
            tls=TlsMode.STARTTLS,
            username="sender",
            password=secret_box.encrypt(password),
        ),
        **extra,
    )


def outbound_for(channel: ChannelConfig, *, to: str, **extra: Any) -> OutboundEmail:
    values: dict[str, Any] = {
        "outbound_id": f"out-{uuid.uuid4().hex[:12]}",
        "channel_id": channel.id,
        "conversation_id": "conv-1",
        "to": [{"name": "Ada", "address": to}],
        "subject": "Re: where is my parcel?",
        "text_body": "It left the warehouse today.\n",
    }
    values.update(extra)
    return OutboundEmail.model_validate(values)


def recipient(tag: str = "ada") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@customer.example"


async def received(smtp_server: SmtpServer, address: str, timeout: float = 30) -> ReceivedMail:
    """Wait (off the event loop: the sender runs on it) for mail to ``address``."""
    return await asyncio.to_thread(smtp_server.wait_for, lambda m: address in m.rcpt_tos, timeout)


def delivery(tail: TopicTail, outbound_id: str) -> list[DeliveryEvent]:
    """The outbound's delivery events, without the intents (``sending``)."""
    return [
        e
        for e in tail.events(DeliveryEvent)
        if e.outbound_id == outbound_id and e.status is not DeliveryStatus.SENDING
    ]


async def test_outbound_email_is_sent_over_starttls_with_auth_and_reported(
    settings, producer, deliveries, smtp_server, secret_box, wait_until
):
    channel = smtp_channel(secret_box, smtp_server)
    await producer.publish(settings.kafka.topics.channels, channel.id, channel)
    to, bcc = recipient(), recipient("audit")
    outbound = outbound_for(
        channel, to=to, bcc=[{"address": bcc}], in_reply_to="<parent@customer.example>"
    )

    async with running(settings):
        await producer.publish(settings.kafka.topics.outbound, "conv-1", outbound)
        mail = await received(smtp_server, to)
        (sent,) = await wait_until(lambda: delivery(deliveries, outbound.outbound_id))

    assert mail.tls
    assert mail.authenticated_as == "sender"
    assert mail.mail_from == CHANNEL_ADDRESS
    assert set(mail.rcpt_tos) == {to, bcc}
    message = mail.message()
    assert "Bcc" not in message
    assert bcc.encode() not in mail.raw
    assert message["Message-ID"] == make_message_id(outbound.outbound_id, "shop.example")
    assert message["In-Reply-To"] == "<parent@customer.example>"
    assert message["Subject"] == "Re: where is my parcel?"

    assert sent.status is DeliveryStatus.SENT
    assert sent.message_id == message["Message-ID"]
    assert sent.server_response is not None
    assert sent.server_response.startswith("250")
    assert sent.transport == "smtp"


async def test_same_outbound_id_is_delivered_once_even_across_restarts(
    settings, producer, deliveries, smtp_server, secret_box, wait_until
):
    """Idempotency by outbound_id, in one run and after a restart (ledger from email.delivery)."""
    channel = smtp_channel(secret_box, smtp_server)
    topics = settings.kafka.topics
    await producer.publish(topics.channels, channel.id, channel)
    to = recipient()
    outbound = outbound_for(channel, to=to)

    def copies() -> int:
        return sum(
            1
            for m in smtp_server.messages
            if to in m.rcpt_tos
            and m.message()["Message-ID"] == make_message_id(outbound.outbound_id, "shop.example")
        )

    async with running(settings):
        await producer.publish(topics.outbound, "conv-1", outbound)
        await producer.publish(topics.outbound, "conv-1", outbound)
        marker = outbound_for(channel, to=recipient("marker"))
        await producer.publish(topics.outbound, "conv-1", marker)  # same key: after both copies
        await received(smtp_server, marker.to[0].address)
    assert copies() == 1

    async with running(settings):  # a fresh sender rebuilds its ledger from email.delivery
        await producer.publish(topics.outbound, "conv-1", outbound)
        marker = outbound_for(channel, to=recipient("marker"))
        await producer.publish(topics.outbound, "conv-1", marker)
        await received(smtp_server, marker.to[0].address)
    assert copies() == 1
    await wait_until(lambda: delivery(deliveries, marker.outbound_id))
    assert [e.status for e in delivery(deliveries, outbound.outbound_id)] == [DeliveryStatus.SENT]


async def test_garbage_and_header_injection_go_to_the_dlq(
    settings, producer, deliveries, dead_letters, smtp_server, secret_box, wait_until
):
    channel = smtp_channel(secret_box, smtp_server)
    topics = settings.kafka.topics
    await producer.publish(topics.channels, channel.id, channel)
    injected = outbound_for(channel, to=recipient()).model_dump(mode="json", by_alias=True)
    injected["subject"] = "Hello\r\nBcc: everyone@victim.example"
    after = outbound_for(channel, to=recipient("after"))

    async with running(settings):
        await producer.publish_raw(topics.outbound, encode_key("junk"), b"\xff not json", [])
        await producer.publish_raw(
            topics.outbound, encode_key("conv-x"), json.dumps(injected).encode(), []
        )
        await producer.publish(topics.outbound, "conv-1", after)
        letters = await wait_until(
            lambda: len(dead_letters.events(DeadLetter)) >= 2 and dead_letters.events(DeadLetter)
        )
        (rejected,) = await wait_until(lambda: delivery(deliveries, injected["outbound_id"]))
        await received(smtp_server, after.to[0].address)  # a bad record blocks nothing

    by_key = {letter.original_key: letter for letter in letters}
    assert by_key[b"junk"].stage == "sender"
    assert by_key[b"junk"].error_kind == "PoisonRecord"
    assert by_key[b"junk"].original_value == b"\xff not json"
    assert by_key[b"conv-x"].error_kind == "PoisonRecord"
    assert "subject" in by_key[b"conv-x"].error_message
    assert rejected.status is DeliveryStatus.REJECTED
    assert "CR or LF" in (rejected.reason or "")
    assert not any("everyone@victim.example" in m.rcpt_tos for m in smtp_server.messages)


async def test_5xx_is_rejected_and_4xx_goes_through_the_retry_topics_then_fails(
    settings, producer, deliveries, dead_letters, smtp_server, secret_box, wait_until
):
    """5xx: rejected at once. 4xx every time: deferred at each retry level (due later), then
    failed after the last, and the record is in email.dlq as retriable (replayable)."""
    channel = smtp_channel(secret_box, smtp_server)
    topics = settings.kafka.topics
    await producer.publish(topics.channels, channel.id, channel)
    gone, busy = recipient("gone"), recipient("busy")
    smtp_server.reply_to_recipients(gone.replace(".", r"\."), "550 5.1.1 No such user")
    smtp_server.reply_to_recipients(busy.replace(".", r"\."), "451 4.3.0 Try again later")
    to_gone = outbound_for(channel, to=gone)
    to_busy = outbound_for(channel, to=busy)

    async with running(settings):
        await producer.publish(topics.outbound, "conv-1", to_gone)
        await producer.publish(topics.outbound, "conv-2", to_busy)
        (rejected,) = await wait_until(lambda: delivery(deliveries, to_gone.outbound_id))
        events = await wait_until(
            lambda: (
                len(delivery(deliveries, to_busy.outbound_id)) >= 3
                and delivery(deliveries, to_busy.outbound_id)
            )
        )
        letters = await wait_until(
            lambda: len(dead_letters.events(DeadLetter)) >= 2 and dead_letters.events(DeadLetter)
        )

    assert rejected.status is DeliveryStatus.REJECTED
    assert rejected.smtp_code == 550
    assert rejected.server_response == "550 5.1.1 No such user"
    first, second, final = events
    assert [e.status for e in events] == [
        DeliveryStatus.DEFERRED,
        DeliveryStatus.DEFERRED,
        DeliveryStatus.FAILED,
    ]
    assert [first.retry_level, second.retry_level] == [1, 2]
    assert first.smtp_code == 451
    assert first.retry_at is not None
    assert second.at >= first.retry_at  # consumed when due, not before
    assert final.smtp_code == 451
    assert final.attempt == len(settings.retry_delays_s) + settings.retry_attempts
    by_retriable = {letter.retriable: letter for letter in letters}
    assert by_retriable[False].error_kind == "MessageRejected"
    busy_letter = by_retriable[True]
    assert busy_letter.source_topic == f"{topics.outbound}.retry.2"
    assert busy_letter.original_headers["original-topic"] == topics.outbound
    assert busy_letter.original_key == b"conv-2"
    assert json.loads(busy_letter.original_value or b"{}")["outbound_id"] == to_busy.outbound_id


async def test_a_greylisted_message_comes_back_from_the_retry_topic_and_is_sent(
    settings, producer, deliveries, smtp_server, secret_box, wait_until
):
    """4xx once (greylisting): deferred, then sent from the retry topic when due."""
    channel = smtp_channel(secret_box, smtp_server)
    topics = settings.kafka.topics
    await producer.publish(topics.channels, channel.id, channel)
    grey = recipient("grey")
    smtp_server.reply_to_recipients(grey.replace(".", r"\."), "451 4.7.1 Greylisted")
    outbound = outbound_for(channel, to=grey)

    async with running(settings):
        await producer.publish(topics.outbound, "conv-1", outbound)
        (deferred,) = await wait_until(lambda: delivery(deliveries, outbound.outbound_id))
        smtp_server.clear_recipient_replies()
        mail = await received(smtp_server, grey)
        events = await wait_until(
            lambda: (
                len(delivery(deliveries, outbound.outbound_id)) >= 2
                and delivery(deliveries, outbound.outbound_id)
            )
        )

    assert deferred.status is DeliveryStatus.DEFERRED
    assert [e.status for e in events] == [DeliveryStatus.DEFERRED, DeliveryStatus.SENT]
    assert events[1].message_id == mail.message()["Message-ID"]
    assert events[1].attempt == 2


async def test_wrong_password_fails_delivery_and_marks_channel_inactive(
    settings, producer, deliveries, smtp_server, secret_box, kafka_settings, wait_until
):
    channel = smtp_channel(secret_box, smtp_server, password="not-the-password")
    topics = settings.kafka.topics
    await producer.publish(topics.channels, channel.id, channel)
    outbound = outbound_for(channel, to=recipient())

    async with (
        TopicTail(kafka_settings, topics.channel_status) as statuses,
        running(settings),
    ):
        await producer.publish(topics.outbound, "conv-1", outbound)
        (failed,) = await wait_until(lambda: delivery(deliveries, outbound.outbound_id))
        (status,) = await wait_until(lambda: statuses.events(ChannelStatus))

    assert failed.status is DeliveryStatus.FAILED
    assert "step auth" in (failed.reason or "")
    assert "not-the-password" not in failed.model_dump_json()
    assert status.channel_id == channel.id
    assert status.direction == "outbound"
    assert status.state is ChannelState.INACTIVE
    assert status.step == "auth"


# --- the SMTP transport alone, against real servers ---------------------------------------------


def transport_for(channel: ChannelConfig, secret_box, *, ca_file, allowed: str = "127.0.0.1"):
    assert isinstance(channel.outbound, SmtpOutbound)
    return SmtpTransport(
        channel.outbound,
        host_policy=HostPolicy.parse(allowed),
        secrets=secret_box,
        tls_context=client_context(extra_ca_file=ca_file),
        timeout=10,
    )


async def test_implicit_tls_server(pki, secret_box):
    """tls=ssl speaks TLS from the first byte (port 465 style)."""
    with SmtpServer(pki, credentials=("sender", "sender-secret"), implicit_tls=True) as server:
        channel = smtp_channel(secret_box, server)
        channel = channel.model_copy(
            update={"outbound": channel.outbound.model_copy(update={"tls": TlsMode.SSL})}
        )
        to = recipient()
        composed = compose(outbound_for(channel, to=to), channel)

        transport = transport_for(channel, secret_box, ca_file=pki.ca_cert)
        result = await transport.send(composed)
        mail = await received(server, to)
        await transport.aclose()

    assert mail.tls
    assert mail.authenticated_as == "sender"
    assert result.message_id == composed.message_id


async def test_untrusted_certificate_is_a_tls_misconfiguration(smtp_server, secret_box):
    channel = smtp_channel(secret_box, smtp_server)
    composed = compose(outbound_for(channel, to=recipient()), channel)

    with pytest.raises(ChannelMisconfigured) as caught:
        await transport_for(channel, secret_box, ca_file=None).send(composed)
    assert caught.value.step == "tls"


async def test_loopback_host_is_refused_without_the_allow_list(smtp_server, secret_box, pki):
    channel = smtp_channel(secret_box, smtp_server)
    composed = compose(outbound_for(channel, to=recipient()), channel)

    with pytest.raises(HostRefused) as caught:
        await transport_for(channel, secret_box, ca_file=pki.ca_cert, allowed="").send(composed)
    assert caught.value.step == "dns"


# --- header injection at the real SMTP server -------------------------------------------------


def _injection_matrix(channel: ChannelConfig, tag: str) -> list[dict[str, Any]]:
    """Outbound records (as JSON dicts) smuggling a Bcc/X-Injected line into each header."""
    raw = b"hi\r\nBcc: evil@victim.example\r\nX-Injected: 1"
    q = "=?UTF-8?Q?" + "".join(f"={b:02X}" for b in raw) + "?="
    b = "=?UTF-8?B?" + base64.b64encode(raw).decode() + "?="
    raw_text = raw.decode()
    records = []
    for name, payload in {"q": q, "b": b, "raw": raw_text}.items():
        for field in ("subject", "to-name", "from-name", "filename", "references"):
            values = outbound_for(channel, to=recipient(f"{tag}-{name}-{field}")).model_dump(
                mode="json", by_alias=True
            )
            match field:
                case "subject":
                    values["subject"] = payload
                case "to-name":
                    values["to"][0]["name"] = payload
                case "from-name":
                    values["from"] = {"name": payload, "address": CHANNEL_ADDRESS}
                case "filename":
                    values["attachments"] = [
                        {"filename": payload, "content_type": "text/plain", "content": "eA=="}
                    ]
                case "references":
                    values["references"] = [f"<{payload}@x.example>"]
            records.append(values)
    return records


async def test_header_injection_matrix_reaches_the_server_as_zero_injected_headers(
    settings, producer, deliveries, smtp_server, secret_box, wait_until
):
    """Raw, Q- and B-encoded CR/LF in subject, names, filename, references: all rejected with a
    delivery event; the SMTP server sees no injected header and no smuggled recipient."""
    channel = smtp_channel(secret_box, smtp_server)
    topics = settings.kafka.topics
    await producer.publish(topics.channels, channel.id, channel)
    tag = f"inj{uuid.uuid4().hex[:6]}"
    matrix = _injection_matrix(channel, tag)
    control = outbound_for(channel, to=recipient(f"{tag}-control"))

    async with running(settings):
        for values in matrix:
            await producer.publish_raw(
                topics.outbound, encode_key("conv-1"), json.dumps(values).encode(), []
            )
        await producer.publish(topics.outbound, "conv-1", control)
        await received(smtp_server, control.to[0].address)
        await wait_until(
            lambda: all(delivery(deliveries, v["outbound_id"]) for v in matrix), timeout=60
        )

    statuses = {v["outbound_id"]: delivery(deliveries, v["outbound_id"]) for v in matrix}
    assert all(
        [e.status for e in events] == [DeliveryStatus.REJECTED] for events in statuses.values()
    ), statuses
    ours = [m for m in smtp_server.messages if any(tag in r for r in m.rcpt_tos)]
    assert [m.rcpt_tos for m in ours] == [(control.to[0].address,)]
    injected = [
        name
        for m in smtp_server.messages
        for part in m.message().walk()
        for name in part.keys()  # noqa: SIM118 - a Message
        if name.lower() in {"bcc", "x-injected"}
    ]
    assert injected == []
    assert not any("evil@victim.example" in m.rcpt_tos for m in smtp_server.messages)
    assert ours[0].message()[LOOP_HEADER] == channel.id


# --- one black-holed server never stalls a healthy channel ----------------------------------


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port that accepts TCP connections (into the backlog) and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        yield listener.getsockname()[1]


async def test_a_black_holed_channel_never_stalls_a_healthy_one(
    settings, producer, deliveries, smtp_server, secret_box, wait_until
):
    """Mail for a server that never answers goes through the retry topics to 'failed' while
    the healthy channel's mail, interleaved on the same partitions, is sent within seconds."""
    settings = settings.model_copy(update={"smtp_timeout": 2.0, "connect_cooldown_s": 5.0})
    healthy = smtp_channel(secret_box, smtp_server)
    topics = settings.kafka.topics
    with black_hole() as port:
        dead = smtp_channel(secret_box, smtp_server)
        dead = dead.model_copy(update={"outbound": dead.outbound.model_copy(update={"port": port})})
        await producer.publish(topics.channels, healthy.id, healthy)
        await producer.publish(topics.channels, dead.id, dead)
        stuck = [outbound_for(dead, to=recipient("stuck")) for _ in range(20)]
        fine = [outbound_for(healthy, to=recipient("fine")) for _ in range(20)]

        async with running(settings):
            started = time.monotonic()
            for index, (a, b) in enumerate(zip(stuck, fine, strict=True)):
                await producer.publish(topics.outbound, f"conv-{index}", a)
                await producer.publish(topics.outbound, f"conv-{index}", b)
            await wait_until(
                lambda: all(delivery(deliveries, o.outbound_id) for o in fine), timeout=60
            )
            healthy_s = time.monotonic() - started
            await wait_until(
                lambda: all(
                    any(e.status.final for e in delivery(deliveries, o.outbound_id)) for o in stuck
                ),
                timeout=90,
            )

    assert healthy_s < 15, f"the healthy channel took {healthy_s:.1f}s"
    assert all(
        [e.status for e in delivery(deliveries, o.outbound_id)] == [DeliveryStatus.SENT]
        for o in fine
    )
    for outbound in stuck:
        events = delivery(deliveries, outbound.outbound_id)
        assert [e.status for e in events] == [
            DeliveryStatus.DEFERRED,
            DeliveryStatus.DEFERRED,
            DeliveryStatus.FAILED,
        ], events
    assert not any("stuck" in r for m in smtp_server.messages for r in m.rcpt_tos)


# --- the session pool against the real server ----------------------------------------------


async def test_a_session_the_server_dropped_is_replaced_transparently(
    lockstep_server, secret_box, pki
):
    """The server closed an idle pooled session: the next message opens a new one and goes
    (without PIPELINING)."""
    smtp_server = lockstep_server
    channel = smtp_channel(secret_box, smtp_server)
    transport = transport_for(channel, secret_box, ca_file=pki.ca_cert)
    first, second = recipient("drop"), recipient("drop")
    try:
        await transport.send(compose(outbound_for(channel, to=first), channel))
        idle = transport.pool._idle[0][0]
        assert idle.transport is not None
        idle.transport.abort()  # the connection is gone, as after a server-side timeout
        await asyncio.sleep(0.1)
        await transport.send(compose(outbound_for(channel, to=second), channel))
    finally:
        await transport.aclose()
    await received(smtp_server, second)
    assert transport.pool.opened == 2


# --- RFC 2920 pipelining against the real server --------------------------------------------


@pytest.fixture(scope="module")
def lockstep_server(pki) -> Iterator[SmtpServer]:
    """The same aiosmtpd server (STARTTLS + AUTH) without PIPELINING: one command at a time."""
    with SmtpServer(pki, credentials=("sender", "sender-secret")) as server:
        yield server


@pytest.fixture(params=["pipelining", "lockstep"])
def any_server(request, smtp_server, lockstep_server) -> SmtpServer:
    """Each server kind in turn (the session's smtp_server advertises PIPELINING)."""
    return smtp_server if request.param == "pipelining" else lockstep_server


async def test_pooled_sessions_carry_messages_in_a_row_and_at_once(any_server, secret_box, pki):
    """Ten messages in a row and eight at once, with and without PIPELINING: pooled TLS+AUTH
    sessions (pipelined after STARTTLS and AUTH by aiosmtplib where the server offers it), no
    more than the cap, every message delivered once, encrypted and authenticated."""
    smtp_server = any_server
    channel = smtp_channel(secret_box, smtp_server)
    transport = transport_for(channel, secret_box, ca_file=pki.ca_cert)
    addresses = [recipient("pool") for _ in range(10)]
    try:
        for address in addresses:
            await transport.send(compose(outbound_for(channel, to=address), channel))
        pipelined = [isinstance(c, PipelinedConnection) for c, _at, _dirty in transport.pool._idle]
        assert pipelined
        assert pipelined == [smtp_server.pipelining] * len(pipelined)
        concurrent = [recipient("pool") for _ in range(8)]
        await asyncio.gather(
            *(
                transport.send(compose(outbound_for(channel, to=address), channel))
                for address in concurrent
            )
        )
    finally:
        await transport.aclose()
    for address in [*addresses, *concurrent]:
        mail = await received(smtp_server, address)
        assert mail.tls
        assert mail.authenticated_as == "sender"
        assert sum(address in m.rcpt_tos for m in smtp_server.messages) == 1
    assert 1 <= transport.pool.opened <= transport.pool.limits.max_sessions


async def test_refusals_map_alike_pipelined_or_not_and_the_session_is_reset(
    any_server, secret_box, pki
):
    """One of two recipients refused: sent, with the refusal; every recipient refused (5xx):
    MessageRejected; a 4xx refusal: SendDeferred — and the same session then sends the next
    message (after RSET; pipelined in front of it where the server pipelines)."""
    server = any_server
    tag = uuid.uuid4().hex[:8]
    server.reply_to_recipients(rf"gone-{tag}-.*", "550 5.1.1 No such user")
    server.reply_to_recipients(rf"busy-{tag}-.*", "451 4.3.0 Try again later")
    channel = smtp_channel(secret_box, server)
    transport = transport_for(channel, secret_box, ca_file=pki.ca_cert)
    gone, busy, ok, after = (
        f"gone-{tag}-1@x.example",
        f"busy-{tag}-1@x.example",
        recipient(),
        recipient(),
    )
    try:
        partly = await transport.send(
            compose(outbound_for(channel, to=ok, cc=[{"address": gone}]), channel)
        )
        with pytest.raises(MessageRejected) as rejected:
            await transport.send(compose(outbound_for(channel, to=gone), channel))
        with pytest.raises(SendDeferred) as deferred:
            await transport.send(compose(outbound_for(channel, to=busy), channel))
        await transport.send(compose(outbound_for(channel, to=after), channel))
        kinds = {type(client) for client, _at, _dirty in transport.pool._idle}
    finally:
        await transport.aclose()
    assert kinds == {PipelinedConnection if server.pipelining else aiosmtplib.SMTP}
    assert partly.refused == {gone: "550 5.1.1 No such user"}
    assert rejected.value.reply is not None
    assert rejected.value.reply.code == 550
    assert deferred.value.reply is not None
    assert deferred.value.reply.code == 451
    await received(server, ok)
    await received(server, after)
    assert transport.pool.opened == 1  # refusals never cost the session
    assert not any(gone in m.rcpt_tos or busy in m.rcpt_tos for m in server.messages)


async def test_a_pipelined_session_the_server_dropped_is_replaced_transparently(
    smtp_server, secret_box, pki
):
    """The server closed an idle pipelined session: the next message opens a new one."""
    channel = smtp_channel(secret_box, smtp_server)
    transport = transport_for(channel, secret_box, ca_file=pki.ca_cert)
    first, second = recipient("drop"), recipient("drop")
    try:
        await transport.send(compose(outbound_for(channel, to=first), channel))
        idle = transport.pool._idle[0][0]
        assert isinstance(idle, PipelinedConnection)
        assert idle.transport is not None
        idle.transport.abort()
        await asyncio.sleep(0.1)
        await transport.send(compose(outbound_for(channel, to=second), channel))
    finally:
        await transport.aclose()
    await received(smtp_server, second)
    assert transport.pool.opened == 2
