"""One channel's fetch loop: connect, take every new message in order, wait for more, repeat.

Messages are taken in batches (at most ``batch_size``), each batch in this order and never another::

    1. download it            (the source sets no flag: BODY.PEEK; sizes and, on a recipient-only
                               channel, the recipient headers are looked at first)
    2. publish the RawEmails  and wait until Kafka acknowledged every one
    3. settle them            the channel's after_fetch: mark seen / move / delete, one command
    4. advance the cursor     past the whole batch and publish it to email.fetch-cursors

A crash between any two steps re-fetches that batch on the next start — at least once, never
lost; the stable ``email_id`` lets consumers drop the duplicate.

Messages that are not published: mail not addressed to a recipient-only channel and mail that
vanished are passed by the cursor, untouched. An oversize message, or one whose content the
server does not deliver after ``unreadable_tries`` sessions, goes to email.dlq with its source
identity and is left on the server; the channel moves on.

A settle that fails is remembered ("published, settle pending"), in the worker and on the cursor
record: the next session, also after a restart or on another fetcher, retries only the settle; it
does not publish the batch again. (A crash between the ack and the settle's outcome still
re-publishes that batch, under the same ``email_id``.)

Failure policy (errors are data, asked by ``retriable``), applied here and nowhere else:

- not retriable (ChannelMisconfigured: bad password, missing folder, untrusted certificate;
  any other PermanentError such as an undecryptable password) -> ChannelStatus *inactive* with
  the reason and the failing step, then a long wait; a config change restarts the worker at once
- retriable (timeouts, resets, Kafka unavailable) -> reconnect after a capped, jittered
  exponential backoff; after ``inactive_after_failures`` in a row the channel is reported inactive
- anything else is a bug: logged with its traceback, then handled like a retriable failure

The worker runs in its own task, so the ``channel_id`` it binds to the log context stays with
this channel. One worker's failures never reach another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from structlog.contextvars import bind_contextvars

from email_channels.errors import PipelineError
from email_channels.events import ChannelState, ChannelStatus, DeadLetter, FetchCursor, utcnow
from email_channels.topics import Topic
from fetcher.metrics import (
    BYTES_FETCHED,
    DEAD_LETTERS,
    ERRORS,
    MESSAGE_SECONDS,
    MESSAGES_FETCHED,
    SKIPPED,
)
from fetcher.published import fingerprint
from fetcher.rawemail import build_raw_email, raw_email_of_blob
from fetcher.sources import Outcome, SourceUnavailable

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence
    from datetime import datetime

    from email_channels.blobstore import BlobStore
    from email_channels.events import ChannelConfig, RawEmail, SourceIdentity
    from fetcher.published import PublishedLookup
    from fetcher.sink import EventSink
    from fetcher.sources import Fetched, MailSource, Pending, SourceFactory

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WorkerPolicy:
    """How long a worker waits after failures, and when it calls its channel inactive."""

    first_backoff: float = 1.0
    max_backoff: float = 300.0
    misconfigured_backoff: float = 300.0
    inactive_after_failures: int = 3
    batch_size: int = 200
    first_batch_size: int = 25
    """A backlog starts with a small batch, doubling up to ``batch_size``: the first batch is
    the one download nothing overlaps with, so a small one gets Kafka busy sooner."""
    unreadable_tries: int = 3

    def batches(self, count: int) -> list[tuple[int, int]]:
        """``(start, end)`` of the batches of ``count`` pending messages (pure)."""
        size = max(1, min(self.first_batch_size, self.batch_size))
        spans: list[tuple[int, int]] = []
        start = 0
        while start < count:
            spans.append((start, min(start + size, count)))
            start += size
            size = min(size * 2, max(self.batch_size, 1))
        return spans

    def backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter, so channels of one server spread out."""
        exponent = min(max(failures - 1, 0), 32)  # bounded: 2**1024 would overflow a float
        ceiling = min(self.max_backoff, self.first_backoff * 2**exponent)
        return float(ceiling * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not cryptography


class ChannelWorker:
    """Fetches one channel until :meth:`stop` (finishing the message in flight)."""

    def __init__(
        self,
        channel: ChannelConfig,
        cursor: FetchCursor | None,
        *,
        sources: SourceFactory,
        sink: EventSink,
        blobs: BlobStore,
        inline_max_bytes: int,
        reported_by: str,
        policy: WorkerPolicy | None = None,
        published: PublishedLookup | None = None,
    ) -> None:
        self.channel = channel
        self._cursor = cursor if cursor is not None else FetchCursor(channel_id=channel.id)
        self._sources = sources
        self._sink = sink
        self._blobs = blobs
        self._inline_max_bytes = inline_max_bytes
        self._reported_by = reported_by
        self._policy = policy or WorkerPolicy()
        self._stopping = asyncio.Event()
        self._failures = 0
        self._reported: tuple[ChannelState, str | None, str | None] | None = None
        self._last_success_at: datetime | None = None
        self._published = published
        self._known: set[str] | None = None  # fingerprints, loaded when a folder is renumbered
        self._unsettled = list(self._cursor.unsettled)  # published, settle pending
        self._unreadable: dict[str, int] = {}  # message key -> sessions it could not be read

    @property
    def cursor(self) -> FetchCursor:
        """How far this worker got (may be ahead of email.fetch-cursors if a publish failed)."""
        return self._cursor

    def stop(self) -> None:
        """Ask the worker to finish its in-flight message, close the mailbox and return."""
        self._stopping.set()

    async def run(self) -> None:
        bind_contextvars(channel_id=self.channel.id)  # this task's own context
        log.info("channel worker started", revision=self.channel.revision)
        try:
            while not self._stopping.is_set():
                try:
                    await self._session()
                except Exception as exc:
                    self._failures += 1
                    delay = await self._on_failure(exc)
                    await self._pause(delay)
        finally:
            log.info("channel worker stopped")

    # --- one connection ---

    async def _session(self) -> None:
        source = self._sources(self.channel)
        try:
            await source.open()
            while not self._stopping.is_set():
                await self._sync(source)
                await self._succeeded()
                if self._stopping.is_set():
                    break
                await self._unless_stopping(source.wait_for_news())
        finally:
            await source.close()

    async def _sync(self, source: MailSource) -> None:
        if self._unsettled:
            await self._settle(source, self._unsettled)  # published before: only settle now
        pending = await source.pending(self._cursor)
        if pending.cursor != self._cursor:
            self._cursor = pending.cursor
            await self._sink.publish_cursor(self._cursor)
        if pending.messages:
            log.info("new mail", messages=len(pending.messages))
        batches = [
            pending.messages[start:end]
            for start, end in self._policy.batches(len(pending.messages))
        ]
        fetched: list[Fetched] | None = None
        for index, batch in enumerate(batches):
            if self._stopping.is_set():
                return
            if fetched is None:
                fetched = await source.fetch(batch)
            following = batches[index + 1] if index + 1 < len(batches) else None
            fetched = await self._take(source, pending, batch, fetched, following)

    async def _take(
        self,
        source: MailSource,
        pending: Pending,
        batch: Sequence[SourceIdentity],
        fetched: list[Fetched],
        following: Sequence[SourceIdentity] | None,
    ) -> list[Fetched] | None:
        """Publish, settle and pass one fetched batch; returns the following batch, whose
        download ran while Kafka acknowledged this one (the server is not changed by it)."""
        started = time.perf_counter()
        ahead = None
        if following is not None and not self._stopping.is_set():
            ahead = asyncio.ensure_future(source.fetch(following))
            await asyncio.sleep(0)  # its command goes out before the events are built
        try:
            emails, settle, taken = await self._sort(fetched, pending)
            complete = len(taken) == len(batch)
            if not complete and ahead is not None:  # this session ends after this batch
                await _cancelled(ahead)
                ahead = None
            built = time.perf_counter()
            await self._sink.publish_raw(emails)  # returns after Kafka acknowledged every one
        except BaseException:
            if ahead is not None:
                await _cancelled(ahead)
            raise
        acked = time.perf_counter()
        if ahead is not None:  # one command at a time on the connection: the download first
            await asyncio.wait({ahead})
        downloaded = time.perf_counter()
        if settle:
            await self._settle(source, settle, advance=taken)  # only now may the server change
        elif taken:
            self._cursor = source.advance(self._cursor, taken)
            await self._sink.publish_cursor(self._cursor)
        _account(emails, (started, built, acked, downloaded, time.perf_counter()), self.channel)
        await self._succeeded()  # a long backlog shows the channel active from its first mail
        if not complete:
            raise SourceUnavailable(
                f"the server did not deliver the content of {batch[len(taken)].key}; "
                "retrying on a new connection",
                step="fetch",
            )
        return ahead.result() if ahead is not None else None

    async def _sort(
        self, fetched: Sequence[Fetched], pending: Pending
    ) -> tuple[list[RawEmail], list[SourceIdentity], list[SourceIdentity]]:
        """What to publish, what to settle, and what the cursor passes (a prefix of the batch:
        it stops before a message that could not be read yet)."""
        emails: list[RawEmail] = []
        settle: list[SourceIdentity] = []
        taken: list[SourceIdentity] = []
        for item in fetched:
            if item.outcome is Outcome.UNREADABLE and not await self._give_up(item):
                break  # take what came before it; this session ends and the next retries it
            taken.append(item.message)
            if item.outcome is Outcome.FETCHED:
                email = await self._raw_email(item)
                if item.message.key in pending.recheck and await self._published_before(email):
                    log.info(
                        "renumbered message was published before: settled only",
                        source_key=item.message.key,
                        message_id=email.message_id,
                    )
                else:
                    emails.append(email)
                settle.append(item.message)
            elif item.outcome is Outcome.OVERSIZE:
                await self._dead_letter(item, "oversize")
            elif item.outcome is not Outcome.UNREADABLE:  # vanished, or not for this channel
                SKIPPED.labels(item.message.protocol, item.outcome.value).inc()
        return emails, settle, taken

    async def _raw_email(self, item: Fetched) -> RawEmail:
        if item.stored is not None:  # streamed to the blob store by the source
            stored = item.stored
            return raw_email_of_blob(self.channel.id, item.message, stored.ref, stored.message_id)
        assert item.raw is not None
        return await build_raw_email(
            self.channel.id,
            item.message,
            item.raw,
            blobs=self._blobs,
            inline_max_bytes=self._inline_max_bytes,
        )

    async def _settle(
        self,
        source: MailSource,
        messages: Sequence[SourceIdentity],
        *,
        advance: Sequence[SourceIdentity] | None = None,
    ) -> None:
        """Settle published messages, then move the cursor past ``advance`` (default: them).

        If the settle fails, the messages are remembered: the next session settles them
        before anything else and does not publish them again.
        """
        self._unsettled = list(messages)
        passed = list(advance if advance is not None else messages)
        try:
            await source.settle(messages)
        except Exception:
            await self._remember_unsettled()
            raise
        self._unsettled = []
        self._cursor = source.advance(self._cursor, passed)
        if self._cursor.unsettled:
            self._cursor = self._cursor.model_copy(update={"unsettled": []})
        await self._sink.publish_cursor(self._cursor)

    async def _remember_unsettled(self) -> None:
        """Put "published, settle pending" on the cursor record, so that a restart (or another
        fetcher taking the channel over) settles these messages instead of publishing them
        again. Best effort: if Kafka cannot take it either, the worker still remembers."""
        if self._cursor.unsettled == self._unsettled:
            return
        self._cursor = self._cursor.model_copy(
            update={"unsettled": list(self._unsettled), "updated_at": utcnow()}
        )
        try:
            await self._sink.publish_cursor(self._cursor)
        except Exception as exc:
            log.warning("could not record the pending settle on the cursor", error=str(exc))

    async def _give_up(self, item: Fetched) -> bool:
        """Count a session in which ``item`` was unreadable; dead-letter it after N."""
        key = item.message.key
        tries = self._unreadable.get(key, 0) + 1
        self._unreadable[key] = tries
        if tries < self._policy.unreadable_tries:
            log.warning("message content not readable", source_key=key, tries=tries)
            return False
        self._unreadable.pop(key, None)
        await self._dead_letter(item, "unreadable", attempts=tries)
        return True

    async def _dead_letter(self, item: Fetched, reason: str, *, attempts: int = 1) -> None:
        """email.dlq gets the message's identity (and headers, when known); it stays on the
        server, and the cursor passes it."""
        message = item.message
        if reason == "oversize":
            text = f"message of {item.size} bytes is above the fetcher's size limit"
        else:
            text = f"the server did not deliver readable content after {attempts} tries"
        letter = DeadLetter(
            stage="fetch",
            source_topic=Topic.RAW.value,
            partition=-1,
            offset=-1,
            error_kind=reason,
            error_message=text,
            retriable=False,
            attempts=attempts,
            original_key=self.channel.id.encode(),
            original_value=item.headers,
            channel_id=self.channel.id,
            source=message,
        )
        await self._sink.publish_dead_letter(letter)
        DEAD_LETTERS.labels(message.protocol, reason).inc()
        log.warning(
            "message dead-lettered, left on the server",
            source_key=message.key,
            reason=reason,
            size=item.size,
        )

    async def _published_before(self, email: RawEmail) -> bool:
        if self._published is None:
            return False
        if self._known is None:
            self._known = await self._published.fingerprints(self.channel.id)
            log.info("published fingerprints loaded", known=len(self._known))
        return fingerprint(email.message_id, email.sha256) in self._known

    # --- status and failures ---

    async def _succeeded(self) -> None:
        """Mail flows: reset the failure count, report active when that is news."""
        self._failures = 0
        self._last_success_at = utcnow()
        if self._reported is None or self._reported[0] is not ChannelState.ACTIVE:
            log.info("channel active")
            await self._report(ChannelState.ACTIVE)

    async def _on_failure(self, exc: Exception) -> float:
        kind = exc.kind if isinstance(exc, PipelineError) else type(exc).__name__
        step: str | None = getattr(exc, "step", None)
        ERRORS.labels(kind, step or "none").inc()
        reason = str(exc) or kind
        if isinstance(exc, PipelineError) and not exc.retriable:
            delay = self._policy.misconfigured_backoff
            log.warning(
                "channel needs attention", kind=kind, step=step, error=reason, retry_in_s=delay
            )
            await self._report(ChannelState.INACTIVE, reason=reason, step=step or "config")
            return delay
        delay = self._policy.backoff(self._failures)
        if isinstance(exc, PipelineError):
            log.warning(
                "channel failed, reconnecting",
                kind=kind,
                step=step,
                error=reason,
                failures=self._failures,
                retry_in_s=round(delay, 2),
            )
        else:
            log.error(
                "unexpected error in channel worker",
                failures=self._failures,
                retry_in_s=round(delay, 2),
                exc_info=exc,
            )
            reason = f"internal error: {kind}"
        if self._failures >= self._policy.inactive_after_failures:
            await self._report(ChannelState.INACTIVE, reason=reason, step=step)
        return delay

    async def _report(
        self, state: ChannelState, *, reason: str | None = None, step: str | None = None
    ) -> None:
        """Publish the channel's status when it changed; a failed report changes nothing else."""
        if self._reported == (state, reason, step):
            return
        status = ChannelStatus(
            channel_id=self.channel.id,
            direction="inbound",
            state=state,
            reason=reason,
            step=step,
            reported_by=self._reported_by,
            last_success_at=self._last_success_at,
        )
        try:
            await self._sink.publish_status(status)
        except Exception as exc:
            log.warning("could not publish channel status", state=state.value, error=str(exc))
            return
        self._reported = (state, reason, step)

    # --- waiting ---

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _unless_stopping(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` until it returns or the worker is asked to stop, whichever is first."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, stopping):
                pending.cancel()
            await asyncio.gather(task, stopping, return_exceptions=True)
        if not task.cancelled():
            task.result()


def _account(
    emails: Sequence[RawEmail],
    times: tuple[float, float, float, float, float],
    channel: ChannelConfig,
) -> None:
    """Metrics and the log line of a published batch (where its time went)."""
    if not emails:
        return
    started, built, acked, downloaded, done = times
    for email in emails:
        storage = "inline" if email.raw_mime is not None else "blob"
        MESSAGES_FETCHED.labels(email.source.protocol, storage).inc()
        BYTES_FETCHED.labels(email.source.protocol).inc(email.size)
    log.info(
        "messages fetched",
        messages=len(emails),
        first_uid=emails[0].source.uid,
        bytes=sum(e.size for e in emails),
        after_fetch=_after_fetch(channel),
        seconds=round(done - started, 3),
        build_s=round(built - started, 3),
        publish_s=round(acked - built, 3),
        next_download_s=round(downloaded - acked, 3),
        settle_s=round(done - downloaded, 3),
    )
    MESSAGE_SECONDS.labels(emails[0].source.protocol).observe((done - started) / len(emails))


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has finished (whatever it raised)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _after_fetch(channel: ChannelConfig) -> str | None:
    after = getattr(channel.inbound, "after_fetch", None)
    return getattr(after, "value", None)
