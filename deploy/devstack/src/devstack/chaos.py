"""The fault-injection harness: the whole pipeline as real processes, and a ledger of every mail.

``Pipeline`` runs the four services as child processes against a real Kafka broker, a real
Dovecot and a real SMTP server; any service can be killed with SIGKILL and started again, and
the broker itself can be killed and restarted (when the harness started it). ``Ledger`` reads
what came out — ``email.raw``, ``email.routed`` (read_committed), ``email.delivery``,
``email.dlq``, the SMTP server's received mail and what is left in the mailbox — and counts
delivered, published, routed, dead-lettered, sent, duplicates and lost.

Every scenario has a fixed seed, a bounded number of faults and a time limit; traffic stays on
loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import IO, TYPE_CHECKING, Any, Self

from devstack.ports import free_port
from devstack.processes import SERVICES
from email_channels.codec import decode
from email_channels.consume import make_consumer
from email_channels.events import (
    Address,
    AfterFetch,
    Campaign,
    ChannelConfig,
    DeadLetter,
    DeliveryEvent,
    ImapInbound,
    OutboundEmail,
    RawEmail,
    RoutedEmail,
    SmtpOutbound,
    TlsMode,
)
from email_channels.producer import EventProducer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from devstack.certs import TestPki
    from devstack.dovecot import Dovecot
    from devstack.smtp import SmtpServer
    from email_channels.secretbox import SecretBox
    from email_channels.settings import KafkaSettings

FINAL_STATUSES = frozenset({"sent", "rejected", "failed", "unknown"})
REPLY_SUBJECT = "chaos reply "


def customer_mail(number: int, to: str, *, size: int = 2_000) -> bytes:
    """Corpus message ``number``: a unique Message-ID and a body of about ``size`` bytes."""
    message = EmailMessage()
    message["From"] = f"Customer {number} <c{number}@customer.example>"
    message["To"] = to
    message["Subject"] = f"chaos mail {number}"
    message["Message-ID"] = f"<chaos-{number}@customer.example>"
    message["Date"] = "Mon, 30 Nov 2026 10:00:00 +0000"
    line = f"line of mail {number} ".ljust(70, ".") + "\n"
    message.set_content(line * max(1, size // len(line)))
    return message.as_bytes()


class Service:
    """One service as ``python -m <module>``; its output appended to a log file."""

    def __init__(
        self, name: str, env: dict[str, str], log_dir: Path, *, module: str | None = None
    ) -> None:
        self.name = name
        self.module = module or SERVICES[name]
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        handle: IO[bytes]
        with self.log_path.open("ab") as handle:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter, our module
                [sys.executable, "-m", self.module],
                env={**os.environ, **self.env},
                stdout=handle,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as a crashed node or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.kills += 1

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return -9
        return self.process.returncode

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Pipeline:
    """The four services around one channel (IMAP in, SMTP out) on this test's topics."""

    kafka: KafkaSettings
    dovecot: Dovecot
    smtp: SmtpServer
    pki: TestPki
    secret_box: SecretBox
    secret_keys: str
    work_dir: Path
    mail_user: str
    mail_password: str
    after_fetch: AfterFetch = AfterFetch.DELETE
    services: dict[str, Service] = field(default_factory=dict)
    channel_id: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:8]}")
    campaign_id: str = "chaos-campaign"

    @property
    def address(self) -> str:
        return f"{self.mail_user}@example.test"

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            "KAFKA_PARTITIONS": str(self.kafka.partitions),
            "EMAIL_CHANNELS_SECRET_KEYS": self.secret_keys,
            "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{self.work_dir / 'blobs'}",
            "EMAIL_CHANNELS_ALLOWED_HOSTS": "127.0.0.1",
            "EMAIL_CHANNELS_CA_FILE": str(self.pki.ca_cert),
            "EMAIL_CHANNELS_LOG_FORMAT": "json",
            "CONFIG_API_HOST": "127.0.0.1",
            "CONFIG_API_PORT": str(free_port()),
            "CONFIG_API_ADMIN_TOKEN": "chaos-admin-token-for-the-harness",
        }

    async def configure(self) -> None:
        """Publish the campaign and the channel straight to the compacted config topics."""
        assert self.smtp.credentials is not None
        channel = ChannelConfig(
            id=self.channel_id,
            name="chaos mailbox",
            email_address=self.address,
            default_campaign_id=self.campaign_id,
            enabled=True,
            inbound=ImapInbound(
                host=self.dovecot.host,
                port=self.dovecot.imaps_port,
                tls=TlsMode.SSL,
                username=self.mail_user,
                password=self.secret_box.encrypt(self.mail_password),
                after_fetch=self.after_fetch,
            ),
            outbound=SmtpOutbound(
                host=self.smtp.host,
                port=self.smtp.port,
                tls=TlsMode.STARTTLS,
                username=self.smtp.credentials[0],
                password=self.secret_box.encrypt(self.smtp.credentials[1]),
            ),
        )
        topics = self.kafka.topics
        async with EventProducer(self.kafka, client_id="chaos-config") as producer:
            await producer.publish(
                topics.campaigns, self.campaign_id, Campaign(id=self.campaign_id, name="Chaos")
            )
            await producer.publish(topics.channels, self.channel_id, channel)

    def start(self, *names: str) -> None:
        env = self.env()
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        for name in names or ("router", "fetcher", "sender"):
            service = self.services.get(name) or Service(name, env, self.work_dir / "logs")
            self.services[name] = service
            service.start()

    def add_replica(self, service: str, number: int) -> str:
        """Start one more instance of ``service`` as ``<service>-<number>`` (its own router
        instance id, so it joins the group instead of fencing the first); returns its name."""
        name = f"{service}-{number}"
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        env = {**self.env(), "ROUTER_INSTANCE_ID": f"chaos-{name}"}
        replica = Service(name, env, self.work_dir / "logs", module=SERVICES[service])
        self.services[name] = replica
        replica.start()
        return name

    def remove_replica(self, name: str) -> None:
        """Stop a replica the way a scale-down does (SIGTERM: it leaves its group cleanly)."""
        self.services.pop(name).stop()

    def restart(self, name: str) -> None:
        self.services[name].kill()
        self.services[name].start()

    def check_alive(self) -> None:
        for name, service in self.services.items():
            if not service.alive():
                raise AssertionError(f"{name} died by itself:\n{service.tail()}")

    def stop(self) -> dict[str, int | None]:
        return {name: service.stop() for name, service in self.services.items()}

    def deliver(self, numbers: Iterable[int], *, size: int = 2_000) -> list[str]:
        """Put corpus mails into the mailbox (real delivery, dovecot-lda); their Message-IDs."""
        numbers = list(numbers)

        def one(number: int) -> None:
            self.dovecot.deliver(self.mail_user, customer_mail(number, self.address, size=size))

        with ThreadPoolExecutor(max_workers=4) as pool:  # dovecot-lda is one process per mail
            list(pool.map(one, numbers))
        return [f"<chaos-{number}@customer.example>" for number in numbers]

    async def publish_outbound(self, count: int, *, run: str) -> list[str]:
        """``count`` replies on email.outbound, spread over conversations; their outbound ids."""
        ids = []
        async with EventProducer(self.kafka, client_id="chaos-campaign") as producer:
            pending = []
            for number in range(count):
                outbound = OutboundEmail(
                    outbound_id=f"{run}-{number}",
                    channel_id=self.channel_id,
                    conversation_id=f"conv-{number % 37}",
                    to=[Address(address=f"c{number}@customer.example")],
                    subject=f"{REPLY_SUBJECT}{run}-{number}",
                    text_body="Thank you.\n" * 40,
                )
                ids.append(outbound.outbound_id)
                pending.append(
                    await producer.raw.send(
                        self.kafka.topics.outbound,
                        key=(outbound.conversation_id or "").encode(),
                        value=outbound.model_dump_json(by_alias=True).encode(),
                    )
                )
            await asyncio.gather(*pending)
        return ids

    def mailbox_count(self) -> int:
        """Messages still in INBOX on the server (IMAP STATUS over TLS)."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        with imaplib.IMAP4_SSL(
            self.dovecot.host, self.dovecot.imaps_port, ssl_context=context
        ) as imap:
            imap.login(self.mail_user, self.mail_password)
            _, data = imap.status("INBOX", "(MESSAGES)")
            text = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
            return int(text.rsplit("MESSAGES", 1)[1].strip(" )"))


# --- the ledger -----------------------------------------------------------------------------


async def read_topic(
    kafka: KafkaSettings, topic: str, *, idle_s: float = 2.0, limit_s: float = 60.0
) -> list[Any]:
    """Every committed record of ``topic`` (read_committed), until ``idle_s`` without news."""
    consumer = make_consumer(kafka, topic, group_id=None, client_id=f"ledger-{uuid.uuid4().hex}")
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + limit_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < idle_s:
            batches = await consumer.getmany(timeout_ms=300)
            fresh = [record for batch in batches.values() for record in batch]
            if fresh:
                records.extend(fresh)
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return records


@dataclass
class Ledger:
    """What happened to every mail of a scenario."""

    scenario: str
    delivered: int = 0
    published: int = 0
    published_distinct: int = 0
    raw_duplicates_other_id: int = 0
    routed: int = 0
    routed_distinct: int = 0
    routed_duplicates: int = 0
    dead_lettered: int = 0
    lost_inbound: int = 0
    left_in_mailbox: int | None = None
    outbound: int = 0
    sent: int = 0
    smtp_received: int = 0
    smtp_duplicates: int = 0
    no_final_status: int = 0
    conflicting_final_status: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def table(self) -> str:
        rows = [
            ("delivered into the mailbox", self.delivered),
            ("published on email.raw (distinct email ids)", self.published_distinct),
            ("  raw records in all (re-fetches)", self.published),
            ("  re-fetches with another email id", self.raw_duplicates_other_id),
            ("routed (distinct Message-IDs)", self.routed_distinct),
            ("  duplicates visible on email.routed", self.routed_duplicates),
            ("dead-lettered", self.dead_lettered),
            ("LOST (delivered, neither routed nor dead-lettered)", self.lost_inbound),
            ("left in the mailbox", self.left_in_mailbox),
            ("outbound records", self.outbound),
            ("sent (final status)", self.sent),
            ("received by the SMTP server", self.smtp_received),
            ("  duplicates at the SMTP server (Message-ID)", self.smtp_duplicates),
            ("outbound ids without a final status", self.no_final_status),
            ("outbound ids with conflicting final statuses", self.conflicting_final_status),
            ("final statuses", dict(self.statuses) or "-"),
            ("faults injected", self.faults or "-"),
            ("seconds", round(self.seconds, 1)),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"== ledger: {self.scenario}"]
        lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
        return "\n".join(lines)


async def take_ledger(
    scenario: str,
    pipeline: Pipeline,
    *,
    message_ids: list[str],
    outbound_ids: list[str],
    seconds: float,
) -> Ledger:
    topics = pipeline.kafka.topics
    ledger = Ledger(scenario=scenario, delivered=len(message_ids), outbound=len(outbound_ids))
    ledger.seconds = seconds
    ledger.faults = {name: s.kills for name, s in pipeline.services.items() if s.kills}

    raw = [decode(RawEmail, r.value) for r in await read_topic(pipeline.kafka, topics.raw)]
    ledger.published = len(raw)
    ledger.published_distinct = len({event.email_id for event in raw})
    ids_per_source: dict[str, set[str]] = defaultdict(set)
    for event in raw:
        ids_per_source[event.message_id or event.source.key].add(event.email_id)
    ledger.raw_duplicates_other_id = sum(len(ids) - 1 for ids in ids_per_source.values())

    routed = [decode(RoutedEmail, r.value) for r in await read_topic(pipeline.kafka, topics.routed)]
    ledger.routed = len(routed)
    by_message = Counter(event.message_id for event in routed)
    ledger.routed_distinct = len(by_message)
    ledger.routed_duplicates = sum(n - 1 for n in by_message.values())

    dead = [decode(DeadLetter, r.value) for r in await read_topic(pipeline.kafka, topics.dlq)]
    ledger.dead_lettered = len(dead)
    dead_ids = {_dead_message_id(letter) for letter in dead}
    ledger.lost_inbound = sum(
        1 for mid in message_ids if mid not in by_message and mid not in dead_ids
    )
    if pipeline.after_fetch is AfterFetch.DELETE:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            ledger.left_in_mailbox = await asyncio.to_thread(pipeline.mailbox_count)

    if outbound_ids:
        events = [
            decode(DeliveryEvent, r.value)
            for r in await read_topic(pipeline.kafka, topics.delivery)
        ]
        finals: dict[str, set[str]] = defaultdict(set)
        for delivery in events:
            if delivery.status.value in FINAL_STATUSES:
                finals[delivery.outbound_id].add(delivery.status.value)
        ledger.no_final_status = sum(1 for oid in outbound_ids if not finals.get(oid))
        ledger.conflicting_final_status = sum(1 for oid in outbound_ids if len(finals[oid]) > 1)
        for oid in outbound_ids:
            for status in finals.get(oid, ()):
                ledger.statuses[status] += 1
        ledger.sent = ledger.statuses["sent"]
        wanted = set(outbound_ids)
        received = Counter(
            mail.message()["Message-ID"]
            for mail in pipeline.smtp.messages
            if _outbound_id_of(mail.message()) in wanted
        )
        ledger.smtp_received = sum(received.values())
        ledger.smtp_duplicates = sum(n - 1 for n in received.values())
    return ledger


def _dead_message_id(letter: DeadLetter) -> str | None:
    if letter.original_value is None:
        return None
    with contextlib.suppress(Exception):
        return decode(RawEmail, letter.original_value).message_id
    return None


def _outbound_id_of(message: EmailMessage) -> str | None:
    """The outbound id a received mail was sent for (its subject names it)."""
    subject = str(message["Subject"] or "")
    return subject.removeprefix(REPLY_SUBJECT) if subject.startswith(REPLY_SUBJECT) else None


# --- driving faults -------------------------------------------------------------------------


async def kill_at_progress(
    pipeline: Pipeline,
    name: str,
    *,
    thresholds: Iterable[float],
    progress: Callable[[], float],
    timeout_s: float,
) -> tuple[int, int]:
    """SIGKILL ``name`` and start it again each time ``progress()`` (0..1) first reaches one of
    ``thresholds``, so the kill lands while that service has work in flight (a service that
    commits whole batches may jump past a threshold: the kill then lands between batches or
    after the last one, still a crash and a restart). Returns ``(kills, mid_stream)``."""
    kills = mid_stream = 0
    deadline = time.monotonic() + timeout_s
    for threshold in sorted(thresholds):
        while progress() < threshold and time.monotonic() < deadline:  # noqa: ASYNC110 - polls counters of other tasks
            await asyncio.sleep(0.02)
        if time.monotonic() >= deadline:
            break
        mid_stream += progress() < 1.0
        pipeline.restart(name)
        kills += 1
    return kills, mid_stream


async def wait_for(
    condition: Callable[[], Any], *, timeout_s: float, pipeline: Pipeline | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if pipeline is not None:
            pipeline.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout_s}s")
        await asyncio.sleep(0.5)


class TopicCounter:
    """Counts distinct values of a field on a topic, following it in the background."""

    def __init__(
        self, kafka: KafkaSettings, topic: str, key: Callable[[bytes], str | None]
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._key = key
        self.seen: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        consumer = make_consumer(
            self._kafka, self._topic, group_id=None, client_id=f"count-{uuid.uuid4().hex}"
        )
        await consumer.start()

        async def follow() -> None:
            try:
                async for record in consumer:
                    with contextlib.suppress(Exception):
                        value = self._key(record.value)
                        if value is not None:
                            self.seen.add(value)
            finally:
                await consumer.stop()

        self._task = asyncio.create_task(follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def raw_source_key(value: bytes) -> str | None:
    return decode(RawEmail, value).source.key


def routed_message_id(value: bytes) -> str | None:
    return decode(RoutedEmail, value).message_id


def final_outbound_id(value: bytes) -> str | None:
    event = decode(DeliveryEvent, value)
    return event.outbound_id if event.status.value in FINAL_STATUSES else None
