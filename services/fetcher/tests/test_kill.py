"""kill -9 of real fetcher processes in the middle of the message cycle: nothing is lost, and
every message published twice carries the same ``email_id`` both times.

Each round starts ``python -m fetcher``, waits for a point of the cycle (mail seen, a batch
published and settled, the channel idle), waits a random moment more and kills the process
with SIGKILL; mail keeps arriving between rounds. Small batches spread the kills over every
step: download, publish, ack, settle (delete), cursor. A last process runs to the end.

``make test`` runs a short version (1 kill); ``make chaos`` runs 20 kills per protocol
(marker ``chaos``).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import pytest

from email_channels.codec import decode
from email_channels.events import AfterFetch, RawEmail
from email_channels.producer import EventProducer

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from devstack.dovecot import Dovecot
    from devstack.pytest_plugin import MailUser
    from email_channels.events import ChannelConfig
    from email_channels.settings import KafkaSettings

pytestmark = pytest.mark.integration

MARKERS = ("messages fetched", "new mail", "channel active")


def mime(n: int) -> bytes:
    return (
        f"From: c@example.com\r\nTo: support@example.test\r\nSubject: kill {n}\r\n"
        f"Message-ID: <kill-{n}@example.com>\r\n\r\nbody {n}\r\n"
    ).encode()


class Fetcher:
    """One fetcher process with its log in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fetcher"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self._start = log.stat().st_size

    def logged(self, marker: str) -> bool:
        with self._log.open("rb") as log:
            log.seek(self._start)
            return marker.encode() in log.read()

    async def wait_for(self, marker: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not self.logged(marker):
            if self.process.poll() is not None:
                raise AssertionError(f"fetcher exited:\n{self._log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{marker!r} not logged in {timeout}s")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def kill_rounds(
    *,
    kills: int,
    messages: int,
    channel: ChannelConfig,
    deliver: Callable[[bytes], None],
    remaining: Callable[[], int],
    kafka_settings: KafkaSettings,
    env: dict[str, str],
    log: Path,
    topic_reader: Callable[..., object],
    wait_until: Callable[..., object],
) -> None:
    raw = await topic_reader(kafka_settings.topics.raw)  # type: ignore[misc]
    rng = random.Random(kills * 7919 + messages)
    first = messages // 2
    for n in range(first):
        await asyncio.to_thread(deliver, mime(n))
    async with EventProducer(kafka_settings, client_id="kill-test") as producer:
        await producer.publish(kafka_settings.topics.channels, channel.id, channel)
    delivered = first
    per_round = max((messages - first) // max(kills, 1), 1)
    for round_ in range(kills):
        fetcher = Fetcher(env, log)
        try:
            await fetcher.wait_for(MARKERS[round_ % len(MARKERS)])
            await asyncio.sleep(rng.uniform(0, 0.15))
        finally:
            fetcher.kill()
        for n in range(delivered, min(delivered + per_round, messages)):
            await asyncio.to_thread(deliver, mime(n))
        delivered = min(delivered + per_round, messages)
    for n in range(delivered, messages):
        await asyncio.to_thread(deliver, mime(n))
    fetcher = Fetcher(env, log)
    try:
        await wait_until(lambda: remaining() == 0, timeout=120)  # type: ignore[operator]
        await asyncio.sleep(1)
    finally:
        fetcher.stop()

    by_message_id: dict[str, set[str]] = defaultdict(set)
    for record in raw.records:  # type: ignore[attr-defined]
        email = decode(RawEmail, record.value)
        assert email.message_id is not None
        by_message_id[email.message_id].add(email.email_id)
    expected = {f"<kill-{n}@example.com>" for n in range(messages)}
    assert set(by_message_id) == expected, "lost: " + str(sorted(expected - set(by_message_id)))
    assert all(len(ids) == 1 for ids in by_message_id.values()), "a duplicate with a new id"
    print(  # noqa: T201 - the figure a reader of the run wants
        f"\n{kills} kills: {len(raw.records)} records for {messages} messages "  # type: ignore[attr-defined]
        f"({len(raw.records) - messages} duplicates, all with their first email_id)"  # type: ignore[attr-defined]
    )


def fetcher_env(
    kafka_settings: KafkaSettings, dovecot: Dovecot, secret_keys: str, tmp_path: Path
) -> dict[str, str]:
    return os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "EMAIL_CHANNELS_SECRET_KEYS": secret_keys,
        "EMAIL_CHANNELS_ALLOWED_HOSTS": "127.0.0.1",
        "EMAIL_CHANNELS_CA_FILE": str(dovecot.ca_file),
        "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{tmp_path}/blobs",
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
        "FETCHER_INSTANCE_ID": "kill-test",
        "FETCHER_BATCH_SIZE": "4",
        "FETCHER_POLL_INTERVAL_S": "1",
        "FETCHER_HOT_WINDOW_S": "0",
        "FETCHER_RETRY_FIRST_BACKOFF_S": "0.2",
    }


def imap_remaining(dovecot: Dovecot, user: MailUser) -> int:
    maildir = dovecot.workdir / "home" / user.user / "Maildir"
    return sum(len(list((maildir / sub).iterdir())) for sub in ("new", "cur"))


async def test_kill_9_mid_cycle_loses_nothing_imap(
    kafka_settings, dovecot, mail_user, imap_channel, secret_keys, tmp_path, topic_reader,
    wait_until,
):  # fmt: skip
    """A kill after a batch went out, IMAP delete mode: every message once or more, same id.

    One kill keeps make test short: each restart waits for Kafka to drop the killed member
    from the group (session timeout, 10 s). make chaos kills 20 times."""
    await kill_rounds(
        kills=1,
        messages=24,
        channel=imap_channel(mail_user, after_fetch=AfterFetch.DELETE),
        deliver=lambda raw: dovecot.deliver(mail_user.user, raw),
        remaining=lambda: imap_remaining(dovecot, mail_user),
        kafka_settings=kafka_settings,
        env=fetcher_env(kafka_settings, dovecot, secret_keys, tmp_path),
        log=tmp_path / "fetcher.log",
        topic_reader=topic_reader,
        wait_until=wait_until,
    )


@pytest.mark.chaos
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_twenty_kills_lose_nothing(
    protocol, kafka_settings, dovecot, mail_user, imap_channel, pop3_channel, secret_keys,
    tmp_path, topic_reader, wait_until,
):  # fmt: skip
    """20 kills at every step, delete mode, 400 messages: 0 lost, duplicates keep their id."""
    make = imap_channel if protocol == "imap" else pop3_channel
    await kill_rounds(
        kills=20,
        messages=400,
        channel=make(mail_user, after_fetch=AfterFetch.DELETE),
        deliver=lambda raw: dovecot.deliver(mail_user.user, raw),
        remaining=lambda: imap_remaining(dovecot, mail_user),
        kafka_settings=kafka_settings,
        env=fetcher_env(kafka_settings, dovecot, secret_keys, tmp_path),
        log=tmp_path / "fetcher.log",
        topic_reader=topic_reader,
        wait_until=wait_until,
    )
