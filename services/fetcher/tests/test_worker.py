"""The worker's guarantees, with the fake MailSource and a fake Kafka (our own small interfaces).

- a batch is settled on the server (seen / moved / deleted) only after Kafka acknowledged it;
- the cursor advances after each batch and a new worker resumes from it;
- a failed settle is retried alone, never with a second publish;
- oversize and unreadable messages go to the DLQ and the channel moves on;
- bad settings -> ChannelStatus inactive with the failing step, and a long wait;
- transient failures -> reconnect with backoff, inactive only after several in a row.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

import pytest

from email_channels.blobstore import MemoryBlobStore
from email_channels.errors import ChannelMisconfigured, PermanentError, TransientError
from email_channels.events import (
    ChannelConfig,
    ChannelState,
    ChannelStatus,
    DeadLetter,
    FetchCursor,
    FolderCursor,
    RawEmail,
)
from fetcher.published import fingerprint
from fetcher.rawemail import email_id_for
from fetcher.sources.fake import FakeMailbox, Journal
from fetcher.worker import ChannelWorker, WorkerPolicy

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

CHANNEL = ChannelConfig(id="ch-1", name="Support", enabled=True)
FAST = WorkerPolicy(
    first_backoff=0.01, max_backoff=0.02, misconfigured_backoff=60, inactive_after_failures=3
)


def mime(n: int) -> bytes:
    return f"Message-ID: <m{n}@example.test>\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode()


class FakeKafka:
    """An EventSink; ``ack`` can be held closed to stand for a slow acknowledgement."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.raw: list[RawEmail] = []
        self.cursors: list[FetchCursor] = []
        self.statuses: list[ChannelStatus] = []
        self.letters: list[DeadLetter] = []
        self.ack = asyncio.Event()
        self.ack.set()
        self.raw_errors: list[Exception] = []

    async def publish_raw(self, emails: Sequence[RawEmail]) -> None:
        if not emails:
            return
        uids = [email.source.uid for email in emails]
        self.journal.add("publish", uids)
        await self.ack.wait()
        if self.raw_errors:
            raise self.raw_errors.pop(0)
        self.journal.add("acked", uids)
        self.raw.extend(emails)

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        self.journal.add("dead letter", letter.source.uid if letter.source else None)
        self.letters.append(letter)

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
    policy: WorkerPolicy = FAST,
    published: set[str] | None = None,
) -> ChannelWorker:
    return ChannelWorker(
        CHANNEL,
        cursor,
        sources=box.source,
        sink=kafka,
        blobs=blobs,
        inline_max_bytes=inline_max_bytes,
        reported_by="test-fetcher",
        policy=policy,
        published=KnownFingerprints(published or set()),
    )


class KnownFingerprints:
    """A PublishedLookup over a fixed set."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.asked = 0

    async def fingerprints(self, channel_id: str) -> set[str]:
        self.asked += 1
        return self.known


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
        ("publish", [1]),
        ("acked", [1]),
        ("settle", [1]),
        ("cursor", 1),
    ]


async def test_messages_go_out_in_uid_order_one_settle_and_cursor_per_batch(
    box, kafka, blobs, journal
):
    """Five messages in batches of two: three publishes, three settles, three cursor records."""
    for n in range(1, 6):
        box.deliver(mime(n))
    policy = WorkerPolicy(first_backoff=0.01, max_backoff=0.02, batch_size=2)
    worker = make_worker(box, kafka, blobs, policy=policy)
    task = asyncio.create_task(worker.run())
    await until(lambda: last_uid(worker) == 5)
    await stopped(worker, task)

    assert [email.source.uid for email in kafka.raw] == [1, 2, 3, 4, 5]
    flow = [e for e in journal.kinds("publish", "settle", "cursor") if e != ("cursor", 0)]
    assert flow == [
        ("publish", [1, 2]),
        ("settle", [1, 2]),
        ("cursor", 2),
        ("publish", [3, 4]),
        ("settle", [3, 4]),
        ("cursor", 4),
        ("publish", [5]),
        ("settle", [5]),
        ("cursor", 5),
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
    assert flow[:2] == [("publish", [1]), ("close", None)]  # failed: nothing settled, reconnect
    assert flow[2:5] == [("publish", [1]), ("acked", [1]), ("settle", [1])]
    assert [email.source.uid for email in kafka.raw] == [1]
    assert box.opened == 2


async def test_stop_finishes_the_batch_in_flight_and_takes_no_more(box, kafka, blobs):
    """Stop while a batch waits for its ack: that batch is finished, the next is not started."""
    box.deliver(mime(1))
    box.deliver(mime(2))
    kafka.ack.clear()
    one = WorkerPolicy(first_backoff=0.01, max_backoff=0.02, batch_size=1)
    worker = make_worker(box, kafka, blobs, policy=one)
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


async def test_vanished_message_moves_the_cursor_without_a_publish(box, kafka, blobs):
    """Gone from the server before it was fetched: nothing published, nothing settled."""
    uid = box.deliver(mime(1))
    box.messages.pop(uid)
    box.messages[uid + 5] = mime(2)  # a later one, so the sync sees something
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: last_uid(worker) == uid + 5)
    await stopped(worker, task)
    assert [email.source.uid for email in kafka.raw] == [uid + 5]


async def test_a_failed_settle_is_retried_alone_without_a_second_publish(
    box, kafka, blobs, journal
):
    """STORE fails after Kafka acked: the next session settles the batch, publishes nothing."""
    box.deliver(mime(1))
    box.deliver(mime(2))
    box.settle_errors.append(TransientError("STORE timed out"))
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: box.settled == [1, 2])
    await until(lambda: last_uid(worker) == 2)
    await stopped(worker, task)
    assert journal.kinds("publish") == [("publish", [1, 2])]
    assert journal.kinds("settle") == [("settle", [1, 2]), ("settle", [1, 2])]
    assert len(kafka.raw) == 2


async def test_a_failed_settle_survives_a_restart_on_the_cursor_record(box, kafka, blobs, journal):
    """STORE fails, the worker is gone: a new worker from the stored cursor settles, no publish."""
    box.deliver(mime(1))
    box.settle_errors.append(TransientError("STORE timed out"))
    first = make_worker(box, kafka, blobs, policy=WorkerPolicy(first_backoff=30, max_backoff=30))
    task = asyncio.create_task(first.run())
    await until(lambda: kafka.cursors and kafka.cursors[-1].unsettled)
    await stopped(first, task)
    stored = kafka.cursors[-1]
    assert [m.uid for m in stored.unsettled] == [1]

    second = make_worker(box, kafka, blobs, cursor=stored)
    task = asyncio.create_task(second.run())
    await until(lambda: box.settled == [1])
    await until(lambda: last_uid(second) == 1)
    await stopped(second, task)
    assert journal.kinds("publish") == [("publish", [1])]
    assert len(kafka.raw) == 1
    assert kafka.cursors[-1].unsettled == []


async def test_oversize_message_is_dead_lettered_with_headers_and_the_next_is_taken(
    box, kafka, blobs
):
    """Above the size limit: a dead letter naming the source, left on the server, channel on."""
    box.max_size = 500
    box.deliver(mime(1) + b"x" * 1000)
    box.deliver(mime(2))
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: last_uid(worker) == 2)
    await stopped(worker, task)
    [letter] = kafka.letters
    assert letter.error_kind == "oversize"
    assert letter.source is not None
    assert letter.source.uid == 1
    assert letter.channel_id == CHANNEL.id
    assert b"Message-ID: <m1@example.test>" in (letter.original_value or b"")
    assert [email.source.uid for email in kafka.raw] == [2]
    assert box.settled == [2]  # the oversize one stays on the server untouched


async def test_unreadable_message_is_retried_then_dead_lettered(box, kafka, blobs):
    """Content missing three sessions in a row: DLQ, not settled; mail before and after flows."""
    box.deliver(mime(1))
    box.deliver(mime(2))
    box.deliver(mime(3))
    box.unreadable.add(2)
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: last_uid(worker) == 3)
    await stopped(worker, task)
    assert box.opened == 3  # two failed sessions, then the dead letter
    assert [letter.error_kind for letter in kafka.letters] == ["unreadable"]
    assert kafka.letters[0].attempts == 3
    assert [email.source.uid for email in kafka.raw] == [1, 3]
    assert box.settled == [1, 3]


async def test_mail_not_for_a_recipient_only_channel_is_passed_untouched(box, kafka, blobs):
    """Recipient-only: the other mail is neither published nor settled, but passed."""
    box.recipient = "support@example.test"
    box.deliver(b"To: someone@example.test\r\nMessage-ID: <a@x>\r\n\r\nhi\r\n")
    box.deliver(b"To: x@y.test\r\nDelivered-To: Support@Example.test\r\n\r\nhi\r\n")
    worker = make_worker(box, kafka, blobs)
    task = asyncio.create_task(worker.run())
    await until(lambda: last_uid(worker) == 2)
    await stopped(worker, task)
    assert [email.source.uid for email in kafka.raw] == [2]
    assert box.settled == [2]


async def test_renumbered_folder_is_taken_again_without_republishing_what_was_published(
    box, kafka, blobs
):
    """UIDVALIDITY change: all present mail is looked at again; what was published before is
    settled only, what was not (arrived meanwhile) is published — none is skipped."""
    old_cursor = FetchCursor(
        channel_id=CHANNEL.id, folders={"INBOX": FolderCursor(uidvalidity=1, last_uid=1)}
    )
    box.deliver(mime(1))  # published under the old numbering
    box.deliver(mime(2))  # arrived while the channel was off: never published
    box.renumber(99)
    known = {fingerprint("<m1@example.test>", __import__("hashlib").sha256(mime(1)).hexdigest())}
    worker = make_worker(box, kafka, blobs, cursor=old_cursor, published=known)
    task = asyncio.create_task(worker.run())
    await until(lambda: last_uid(worker) == 2)
    await stopped(worker, task)
    assert [email.raw_mime for email in kafka.raw] == [mime(2)]
    assert box.settled == [1, 2]
    assert worker.cursor.folders["INBOX"] == FolderCursor(uidvalidity=99, last_uid=2)


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
    assert kafka.raw == []


def test_backoff_grows_and_is_capped():
    policy = WorkerPolicy(first_backoff=1, max_backoff=10)
    assert 0.5 <= policy.backoff(1) <= 1
    assert 4 <= policy.backoff(4) <= 8
    assert 5 <= policy.backoff(30) <= 10


def test_a_backlog_starts_with_a_small_batch_that_doubles_up_to_the_batch_size():
    """The first batch (downloaded with nothing to overlap) is small; later ones reach the cap."""
    policy = WorkerPolicy(batch_size=200, first_batch_size=25)
    spans = policy.batches(1000)
    assert [end - start for start, end in spans] == [25, 50, 100, 200, 200, 200, 200, 25]
    assert spans[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert spans[-1][1] == 1000
    assert WorkerPolicy(batch_size=2, first_batch_size=25).batches(5) == [(0, 2), (2, 4), (4, 5)]
    assert policy.batches(0) == []
