"""The worker's guarantees, with a fake mailbox and a fake Kafka (our own small interfaces).

- a message is settled on the server (seen / moved / deleted) only after Kafka acknowledged it;
- the cursor advances after each message and a new worker resumes from it;
- bad settings -> ChannelStatus inactive with the failing step, and a long wait;
- transient failures -> reconnect with backoff, inactive only after several in a row.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from email_channels.blobstore import MemoryBlobStore
from email_channels.errors import ChannelMisconfigured, PermanentError, TransientError
from email_channels.events import (
    ChannelConfig,
    ChannelState,
    ChannelStatus,
    FetchCursor,
    FolderCursor,
    RawEmail,
    SourceIdentity,
)
from fetcher.rawemail import email_id_for
from fetcher.sources import Pending
from fetcher.worker import ChannelWorker, WorkerPolicy

if TYPE_CHECKING:
    from collections.abc import Callable

CHANNEL = ChannelConfig(id="ch-1", name="Support", enabled=True)
FAST = WorkerPolicy(
    first_backoff=0.01, max_backoff=0.02, misconfigured_backoff=60, inactive_after_failures=3
)


def mime(n: int) -> bytes:
    return f"Message-ID: <m{n}@example.test>\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode()


@dataclass
class Journal:
    """What happened, in order, across the fake mailbox and the fake Kafka."""

    entries: list[tuple[str, object]] = field(default_factory=list)

    def add(self, what: str, detail: object) -> None:
        self.entries.append((what, detail))

    def kinds(self, *names: str) -> list[tuple[str, object]]:
        return [entry for entry in self.entries if entry[0] in names]


class FakeMailbox:
    """A folder with UIDs; a source opened on it behaves like a MailSource."""

    def __init__(self, journal: Journal, uidvalidity: int = 7) -> None:
        self.journal = journal
        self.uidvalidity = uidvalidity
        self.messages: dict[int, bytes] = {}
        self.settled: list[int] = []
        self.next_uid = 1
        self.news = asyncio.Event()
        self.open_errors: list[Exception] = []
        self.opened = 0

    def deliver(self, raw: bytes) -> int:
        uid = self.next_uid
        self.messages[uid] = raw
        self.next_uid += 1
        self.news.set()
        return uid

    def source(self, channel: ChannelConfig) -> FakeSource:
        return FakeSource(self)


class FakeSource:
    def __init__(self, box: FakeMailbox) -> None:
        self.box = box

    async def open(self) -> None:
        self.box.opened += 1
        if self.box.open_errors:
            raise self.box.open_errors.pop(0)

    async def close(self) -> None:
        self.box.journal.add("close", None)

    async def pending(self, cursor: FetchCursor) -> Pending:
        folder = cursor.folders.get("INBOX")
        if folder is None or folder.uidvalidity != self.box.uidvalidity:
            cursor = cursor.model_copy(
                update={"folders": {"INBOX": FolderCursor(uidvalidity=self.box.uidvalidity)}}
            )
        after = cursor.folders["INBOX"].last_uid
        self.box.news.clear()
        return Pending(
            cursor,
            [
                SourceIdentity(
                    protocol="imap", folder="INBOX", uidvalidity=self.box.uidvalidity, uid=uid
                )
                for uid in sorted(self.box.messages)
                if uid > after
            ],
        )

    async def fetch(self, message: SourceIdentity) -> bytes | None:
        self.box.journal.add("fetch", message.uid)
        return self.box.messages.get(message.uid or 0)

    async def settle(self, message: SourceIdentity) -> None:
        self.box.journal.add("settle", message.uid)
        self.box.settled.append(message.uid or 0)

    def advance(self, cursor: FetchCursor, message: SourceIdentity) -> FetchCursor:
        folders = {
            "INBOX": FolderCursor(uidvalidity=message.uidvalidity or 0, last_uid=message.uid or 0)
        }
        return cursor.model_copy(update={"folders": folders})

    async def wait_for_news(self) -> None:
        await self.box.news.wait()


class FakeKafka:
    """An EventSink; ``ack`` can be held closed to stand for a slow acknowledgement."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.raw: list[RawEmail] = []
        self.cursors: list[FetchCursor] = []
        self.statuses: list[ChannelStatus] = []
        self.ack = asyncio.Event()
        self.ack.set()
        self.raw_errors: list[Exception] = []

    async def publish_raw(self, email: RawEmail) -> None:
        self.journal.add("publish", email.source.uid)
        await self.ack.wait()
        if self.raw_errors:
            raise self.raw_errors.pop(0)
        self.journal.add("acked", email.source.uid)
        self.raw.append(email)

    async def publish_cursor(self, cursor: FetchCursor) -> None:
        self.journal.add("cursor", cursor.folders["INBOX"].last_uid)
        self.cursors.append(cursor)

    async def publish_status(self, status: ChannelStatus) -> None:
        self.journal.add("status", status.state)
        self.statuses.append(status)


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def box(journal: Journal) -> FakeMailbox:
    return FakeMailbox(journal)


@pytest.fixture
def kafka(journal: Journal) -> FakeKafka:
    return FakeKafka(journal)


@pytest.fixture
def blobs() -> MemoryBlobStore:
    return MemoryBlobStore()


def make_worker(
    box: FakeMailbox,
    kafka: FakeKafka,
    blobs: MemoryBlobStore,
    cursor: FetchCursor | None = None,
    *,
    inline_max_bytes: int = 1_000_000,
) -> ChannelWorker:
    return ChannelWorker(
        CHANNEL,
        cursor,
        sources=box.source,
        sink=kafka,
        blobs=blobs,
        inline_max_bytes=inline_max_bytes,
        reported_by="test-fetcher",
        policy=FAST,
    )


def last_uid(worker: ChannelWorker) -> int | None:
    folder = worker.cursor.folders.get("INBOX")
    return folder.last_uid if folder else None


async def until(predicate: Callable[[], object], timeout: float = 2.0) -> None:
    """Poll a condition on the fakes (they have no events of their own for every state)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.001)


async def stopped(worker: ChannelWorker, task: asyncio.Task[None]) -> None:
    worker.stop()
    async with asyncio.timeout(2):
        await task


async def test_message_is_settled_only_after_kafka_acknowledged_it(box, kafka, blobs, journal):
    """While the publish waits for its ack, the server is not touched; afterwards it is."""
    box.deliver(mime(1))
    kafka.ack.clear()
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())

    await until(lambda: journal.kinds("publish"))
    await asyncio.sleep(0.05)
    assert journal.kinds("settle") == []
    assert box.settled == []

    kafka.ack.set()
    await until(lambda: box.settled == [1])
    await stopped(worker, task)
    assert journal.kinds("fetch", "publish", "acked", "settle", "cursor") == [
        ("cursor", 0),  # first sync of the folder: its UIDVALIDITY is recorded
        ("fetch", 1),
        ("publish", 1),
        ("acked", 1),
        ("settle", 1),
        ("cursor", 1),
    ]


async def test_messages_go_out_in_uid_order_with_the_cursor_after_each(box, kafka, blobs, journal):
    for n in range(1, 4):
        box.deliver(mime(n))
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: len(kafka.raw) == 3)
    await until(lambda: last_uid(worker) == 3)
    await stopped(worker, task)

    assert [email.source.uid for email in kafka.raw] == [1, 2, 3]
    per_message = [e for e in journal.kinds("settle", "cursor") if e != ("cursor", 0)]
    assert per_message == [
        ("settle", 1),
        ("cursor", 1),
        ("settle", 2),
        ("cursor", 2),
        ("settle", 3),
        ("cursor", 3),
    ]
    email = kafka.raw[0]
    assert email.channel_id == CHANNEL.id
    assert email.raw_mime == mime(1)
    assert email.message_id == "<m1@example.test>"
    assert email.email_id == email_id_for(CHANNEL.id, email.source)


async def test_new_mail_is_taken_when_the_source_reports_news(box, kafka, blobs):
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: kafka.statuses)
    box.deliver(mime(1))
    await until(lambda: len(kafka.raw) == 1)
    await stopped(worker, task)


async def test_a_new_worker_resumes_from_the_cursor_and_republishes_nothing(box, kafka, blobs):
    box.deliver(mime(1))
    box.deliver(mime(2))
    first = make_worker(box, kafka, blobs)
    task = asyncio.create_task(first.run())
    await until(lambda: last_uid(first) == 2)
    await stopped(first, task)

    box.deliver(mime(3))
    second = make_worker(box, kafka, blobs, cursor=first.cursor)
    task = asyncio.create_task(second.run())
    await until(lambda: len(kafka.raw) == 3)
    await asyncio.sleep(0.05)
    await stopped(second, task)
    assert [email.source.uid for email in kafka.raw] == [1, 2, 3]


async def test_failed_publish_leaves_the_message_untouched_then_it_is_retried(
    box, kafka, blobs, journal
):
    """Kafka refusing the record: no settle, no cursor move; after reconnecting it goes out."""
    box.deliver(mime(1))
    kafka.raw_errors.append(TransientError("broker unavailable"))
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: box.settled == [1])
    await stopped(worker, task)

    flow = journal.kinds("publish", "acked", "settle", "close")
    assert flow[:2] == [("publish", 1), ("close", None)]  # failed: nothing settled, reconnect
    assert flow[2:5] == [("publish", 1), ("acked", 1), ("settle", 1)]
    assert [email.source.uid for email in kafka.raw] == [1]
    assert box.opened == 2


async def test_stop_finishes_the_message_in_flight_and_takes_no_more(box, kafka, blobs):
    box.deliver(mime(1))
    box.deliver(mime(2))
    kafka.ack.clear()
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: kafka.journal.kinds("publish"))

    worker.stop()
    await asyncio.sleep(0.02)
    assert not task.done()  # still waiting for the ack of message 1
    kafka.ack.set()
    async with asyncio.timeout(2):
        await task
    assert box.settled == [1]
    assert worker.cursor.folders["INBOX"].last_uid == 1
    assert [email.source.uid for email in kafka.raw] == [1]


async def test_misconfigured_channel_is_reported_inactive_with_its_step(box, kafka, blobs):
    """A wrong password: inactive with reason and step 'auth', then a long wait (no hammering)."""
    box.open_errors.append(ChannelMisconfigured("LOGIN refused: bad password", step="auth"))
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: kafka.statuses)
    await asyncio.sleep(0.1)
    await stopped(worker, task)

    [status] = kafka.statuses
    assert status.state is ChannelState.INACTIVE
    assert status.step == "auth"
    assert status.reason == "LOGIN refused: bad password"
    assert status.direction == "inbound"
    assert status.reported_by == "test-fetcher"
    assert box.opened == 1  # misconfigured_backoff (60 s) keeps it from retrying at once


async def test_other_permanent_errors_count_as_misconfigured_config(box, kafka, blobs):
    box.open_errors.append(PermanentError("secret encrypted with an unknown key"))
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: kafka.statuses)
    await stopped(worker, task)
    assert kafka.statuses[0].state is ChannelState.INACTIVE
    assert kafka.statuses[0].step == "config"


async def test_transient_failures_reconnect_and_only_repeated_ones_mark_inactive(box, kafka, blobs):
    box.open_errors.extend([TransientError("timeout")] * 2)
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: kafka.statuses)
    assert [s.state for s in kafka.statuses] == [ChannelState.ACTIVE]
    await stopped(worker, task)

    box.open_errors.extend([TransientError("connection reset")] * 3)
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: len(kafka.statuses) == 3)
    await stopped(worker, task)
    inactive, active = kafka.statuses[1:]
    assert inactive.state is ChannelState.INACTIVE
    assert inactive.reason == "connection reset"
    assert active.state is ChannelState.ACTIVE
    assert active.last_success_at is not None


async def test_bugs_are_retried_like_transient_failures(box, kafka, blobs):
    box.open_errors.append(RuntimeError("oops"))
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: kafka.statuses)
    await stopped(worker, task)
    assert box.opened == 2
    assert kafka.statuses[0].state is ChannelState.ACTIVE


async def test_large_mime_goes_to_the_blob_store(box, kafka, blobs):
    big = mime(1) + b"x" * 2000
    box.deliver(big)
    worker = make_worker(box, kafka, blobs, inline_max_bytes=1000)
    task = asyncio.create_task(worker.run())
    await until(lambda: kafka.raw)
    await stopped(worker, task)

    [email] = kafka.raw
    assert email.raw_mime is None
    assert email.raw_ref is not None
    assert await blobs.get(email.raw_ref) == big
    assert email.size == len(big)


async def test_vanished_message_moves_the_cursor_without_a_publish(box, kafka, blobs, journal):
    uid = box.deliver(mime(1))

    async def vanish(message: SourceIdentity) -> bytes | None:
        journal.add("fetch", message.uid)
        return None

    source = box.source(CHANNEL)
    source.fetch = vanish  # type: ignore[method-assign]
    worker = ChannelWorker(
        CHANNEL,
        None,
        sources=lambda _channel: source,
        sink=kafka,
        blobs=blobs,
        inline_max_bytes=1000,
        reported_by="t",
        policy=FAST,
    )
    task = asyncio.create_task(worker.run())
    await until(lambda: last_uid(worker) == uid)
    await stopped(worker, task)
    assert kafka.raw == []
    assert box.settled == []


async def test_a_corrected_cursor_from_the_source_is_stored(box, kafka, blobs):
    """UIDVALIDITY changed: the source resets the folder's cursor, the worker publishes it."""
    old = FetchCursor(
        channel_id=CHANNEL.id, folders={"INBOX": FolderCursor(uidvalidity=1, last_uid=40)}
    )
    worker = make_worker(box, kafka, blobs, cursor=old)
    task = asyncio.create_task(worker.run())
    await until(lambda: kafka.cursors)
    await stopped(worker, task)
    assert kafka.cursors[0].folders["INBOX"] == FolderCursor(uidvalidity=7, last_uid=0)


def test_backoff_grows_and_is_capped():
    policy = WorkerPolicy(first_backoff=1, max_backoff=10)
    assert 0.5 <= policy.backoff(1) <= 1
    assert 4 <= policy.backoff(4) <= 8
    assert 5 <= policy.backoff(30) <= 10
