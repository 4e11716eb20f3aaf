"""One channel's fetch loop: connect, take every new message in order, wait for more, repeat.

For each message, in this order and never another::

    1. download it            (the source sets no flag: BODY.PEEK)
    2. publish the RawEmail   and wait until Kafka acknowledged it
    3. settle it              the channel's after_fetch: mark seen / move / delete
    4. advance the cursor     and publish it to email.fetch-cursors

A crash between any two steps re-fetches that message on the next start — at least once, never
lost; the stable ``email_id`` lets consumers drop the duplicate.

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
from structlog.contextvars import bind_contextvars, bound_contextvars

from email_channels.errors import PipelineError
from email_channels.events import ChannelState, ChannelStatus, FetchCursor, utcnow
from fetcher.metrics import BYTES_FETCHED, ERRORS, MESSAGE_SECONDS, MESSAGES_FETCHED
from fetcher.rawemail import build_raw_email

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from datetime import datetime

    from email_channels.blobstore import BlobStore
    from email_channels.events import ChannelConfig, SourceIdentity
    from fetcher.sink import EventSink
    from fetcher.sources import MailSource, SourceFactory

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WorkerPolicy:
    """How long a worker waits after failures, and when it calls its channel inactive."""

    first_backoff: float = 1.0
    max_backoff: float = 300.0
    misconfigured_backoff: float = 300.0
    inactive_after_failures: int = 3

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
        pending = await source.pending(self._cursor)
        if pending.cursor != self._cursor:
            self._cursor = pending.cursor
            await self._sink.publish_cursor(self._cursor)
        if pending.messages:
            log.info("new mail", messages=len(pending.messages))
        for message in pending.messages:
            if self._stopping.is_set():
                return
            await self._take(source, message)

    async def _take(self, source: MailSource, message: SourceIdentity) -> None:
        started = time.perf_counter()
        with bound_contextvars(source_key=message.key, uid=message.uid):
            raw = await source.fetch(message)
            if raw is None:
                log.info("message vanished from the server before it was fetched")
            else:
                email = await build_raw_email(
                    self.channel.id,
                    message,
                    raw,
                    blobs=self._blobs,
                    inline_max_bytes=self._inline_max_bytes,
                )
                with bound_contextvars(message_id=email.message_id, email_id=email.email_id):
                    await self._sink.publish_raw(email)  # returns after Kafka's ack
                    await source.settle(message)  # so only now may the server change it
                    storage = "inline" if email.raw_mime is not None else "blob"
                    log.info(
                        "message fetched",
                        size=email.size,
                        storage=storage,
                        after_fetch=_after_fetch(self.channel),
                        seconds=round(time.perf_counter() - started, 3),
                    )
                MESSAGES_FETCHED.labels(message.protocol, storage).inc()
                BYTES_FETCHED.labels(message.protocol).inc(email.size)
            self._cursor = source.advance(self._cursor, message)
            await self._sink.publish_cursor(self._cursor)
        MESSAGE_SECONDS.labels(message.protocol).observe(time.perf_counter() - started)
        await self._succeeded()  # a long backlog shows the channel active from its first mail

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


def _after_fetch(channel: ChannelConfig) -> str | None:
    after = getattr(channel.inbound, "after_fetch", None)
    return getattr(after, "value", None)
