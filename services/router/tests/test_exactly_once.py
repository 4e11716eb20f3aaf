"""Exactly once as consumers see it: routers killed with SIGKILL mid-stream, real processes.

Mail goes to email.raw (including re-fetches of the same email id and the same mail fetched
from a second folder); ``python -m router`` processes are killed with SIGKILL while they route
and restarted; email.routed, read with isolation_level=read_committed, must then hold every
email exactly once. The short version runs with the integration tests; the long one (3,000
messages, ten kills) is behind the ``chaos`` marker (``make chaos``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from email.message import EmailMessage
from typing import TYPE_CHECKING

import pytest

from email_channels.codec import decode
from email_channels.consume import make_consumer
from email_channels.events import ChannelConfig, RawEmail, RoutedEmail, SourceIdentity
from email_channels.producer import EventProducer

if TYPE_CHECKING:
    from pathlib import Path

    from aiokafka import AIOKafkaConsumer

    from email_channels.settings import KafkaSettings

CHANNELS = [f"ch-{n}" for n in range(6)]


def mail(n: int) -> bytes:
    message = EmailMessage()
    message["From"] = f"Customer {n} <c{n}@customer.example>"
    message["To"] = "support@shop.example"
    message["Subject"] = f"Question {n}"
    message["Message-ID"] = f"<q{n}@customer.example>"
    message["Date"] = "Mon, 30 Nov 2026 10:00:00 +0000"
    message.set_content(f"Question number {n}.\n" + "Some text to parse. " * 40)
    return message.as_bytes()


def raw_email(n: int, *, folder: str = "INBOX") -> RawEmail:
    mime = mail(n)
    if folder != "INBOX":  # another path: a different trace header, the same content
        mime = f"Received: from relay.example by {folder}\r\n".encode() + mime
    return RawEmail(
        email_id=f"e-{folder}-{n}",
        channel_id=CHANNELS[n % len(CHANNELS)],
        source=SourceIdentity(protocol="imap", folder=folder, uidvalidity=1, uid=n + 1),
        size=len(mime),
        sha256=hashlib.sha256(mime).hexdigest(),
        raw_mime=mime,
    )


class Router:
    """``python -m router`` as a child process that can be killed with SIGKILL."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.child: subprocess.Popen[bytes] | None = None

    def start(self, instance_id: str) -> None:
        with self.log_path.open("ab") as log:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "router"],
                env={**self.env, "ROUTER_INSTANCE_ID": instance_id},
                stdout=log,
                stderr=log,
            )

    def kill(self) -> None:
        assert self.child is not None
        self.child.send_signal(signal.SIGKILL)
        self.child.wait()

    def stop(self) -> int:
        assert self.child is not None
        if self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)
        return self.child.wait(timeout=60)

    def check_alive(self) -> None:
        assert self.child is not None
        if self.child.poll() is not None:
            tail = self.log_path.read_text(errors="replace").splitlines()[-40:]
            raise AssertionError(f"router exited {self.child.returncode}:\n" + "\n".join(tail))


async def read_new(consumer: AIOKafkaConsumer, into: list[str]) -> None:
    for batch in (await consumer.getmany(timeout_ms=300)).values():
        into.extend(decode(RoutedEmail, record.value).email_id for record in batch)


async def kill_test(
    kafka_settings: KafkaSettings, tmp_path: Path, *, messages: int, kills: int, rotate: bool
) -> None:
    """Route ``messages`` emails (plus re-fetches and second-folder copies) while killing the
    router ``kills`` times; email.routed must hold each email exactly once."""
    topics = kafka_settings.topics
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "KAFKA_PARTITIONS": str(kafka_settings.partitions),
        "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{tmp_path / 'blobs'}",
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
        "EMAIL_CHANNELS_LOG_LEVEL": "warning",
        "ROUTER_BATCH_MAX_RECORDS": "40",
        "ROUTER_SESSION_TIMEOUT_S": "6",
        "ROUTER_TRANSACTION_TIMEOUT_S": "10",
    }
    rng = random.Random(7)
    refetched = rng.sample(range(messages), messages // 20)
    second_folder = rng.sample(range(messages), messages // 20)
    async with EventProducer(kafka_settings, client_id="test-feed") as producer:
        for channel_id in CHANNELS:
            channel = ChannelConfig(id=channel_id, name=channel_id, default_campaign_id="support")
            await producer.publish(topics.channels, channel_id, channel)
        sends = [
            await producer.raw.send(
                topics.raw, key=raw.channel_id.encode(), value=raw.model_dump_json().encode()
            )
            for raw in (raw_email(n) for n in range(messages))
        ]
        await asyncio.gather(*sends)

    router = Router(env, tmp_path / "router.log")
    consumer = make_consumer(kafka_settings, topics.routed, group_id=None, client_id="t-read")
    await consumer.start()
    routed: list[str] = []
    loop = asyncio.get_running_loop()
    try:
        router.start("router-0")
        for kill in range(kills):
            seen = len(routed)
            deadline = loop.time() + 120
            while len(routed) <= seen:  # the router is routing: kill it mid-stream
                router.check_alive()
                assert loop.time() < deadline, "no progress between kills"
                await read_new(consumer, routed)
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            router.kill()
            if kill == kills // 2:  # mail fetched again while the router is down
                async with EventProducer(kafka_settings, client_id="test-refetch") as producer:
                    for raw in [raw_email(n) for n in refetched] + [
                        raw_email(n, folder="Archive") for n in second_folder
                    ]:
                        await producer.publish(topics.raw, raw.channel_id, raw)
            router.start(f"router-{(kill + 1) % 2}" if rotate else "router-0")

        deadline = loop.time() + 240
        while len(set(routed)) < messages and loop.time() < deadline:
            router.check_alive()
            await read_new(consumer, routed)
        for _ in range(10):  # anything routed twice would show up by now
            await read_new(consumer, routed)
        assert router.stop() == 0
    finally:
        if router.child is not None and router.child.poll() is None:
            router.child.kill()
        await consumer.stop()

    counts = Counter(routed)
    twice = {email_id: n for email_id, n in counts.items() if n > 1}
    assert twice == {}, f"{len(twice)} emails routed more than once"
    expected = {f"e-INBOX-{n}" for n in range(messages)}
    missing = expected - set(counts)
    assert not missing, f"{len(missing)} emails lost"
    assert set(counts) == expected  # the second-folder copies were dropped as duplicates


@pytest.mark.integration
async def test_kill_9_twice_mid_stream_loses_nothing_and_duplicates_nothing(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """300 emails, two SIGKILLs while routing, re-fetches and a second folder: each email is
    on email.routed (read_committed) exactly once."""
    await kill_test(kafka_settings, tmp_path, messages=300, kills=2, rotate=False)


@pytest.mark.chaos
@pytest.mark.integration
async def test_kill_9_ten_times_in_3000_messages(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """3,000 emails, ten SIGKILLs mid-stream, alternating instance ids (the broker aborts the
    orphaned transactions after their timeout): 0 lost, 0 duplicates on email.routed."""
    await kill_test(kafka_settings, tmp_path, messages=3000, kills=10, rotate=True)
