"""Per-channel pool of authenticated SMTP sessions: reuse, a cap, idle close, fail-fast.

One :class:`SessionPool` per channel (its transport owns it):

- at most ``max_sessions`` sessions are open or being opened at once; a sender waits for a free
  one at most ``acquire_wait_s``, then the send fails as transient (it comes back through the
  retry topics);
- at most ``max_admitted`` messages are *admitted* at once (:meth:`SessionPool.admitted`): an
  admitted message records its intent (a Kafka round trip) *before* it takes a session, so
  sessions never sit idle waiting for Kafka, and many intents travel in one produce request;
  the bound keeps intents from running far ahead of the sessions (after a crash, at most the
  admitted messages of a channel are reported ``unknown``);
- a session is reused for the next message (last used first); a session whose transaction
  failed is RSET before reuse; one that broke is closed, never reused;
- idle sessions are closed after ``idle_s`` (:meth:`SessionPool.reap`, and on take);
- when opening a session fails transiently (timeout, refused, 4xx greeting), the pool fails
  fast for ``cooldown_s``: messages for a black-holed server go to the retry topics at once
  instead of each holding a worker for a full connect timeout, so they never stall other
  channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from email_channels.errors import PipelineError, TransientError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from sender.transports.smtp import SmtpClient

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_sessions: int = 4
    max_admitted: int = 32
    idle_s: float = 30.0
    cooldown_s: float = 10.0
    acquire_wait_s: float = 30.0


class Session:
    """One pooled SMTP session lent to one send."""

    def __init__(self, client: SmtpClient, *, reused: bool, dirty: bool = False) -> None:
        self.client = client
        self.reused = reused
        self._dirty = dirty
        self.discarded = False

    def needs_reset(self) -> None:
        """The last transaction failed: RSET before the next one."""
        self._dirty = True

    def discard(self) -> None:
        """The session is broken: close it instead of returning it to the pool."""
        self.discarded = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def was_reset(self) -> None:
        """RSET went through: the session is clean again."""
        self._dirty = False


class SessionPool:
    def __init__(
        self,
        open_session: Callable[[], Awaitable[SmtpClient]],
        limits: PoolLimits,
        *,
        where: str,
    ) -> None:
        self._open = open_session
        self.limits = limits
        self._where = where
        self._slots = asyncio.Semaphore(limits.max_sessions)
        self._admission = asyncio.Semaphore(max(limits.max_admitted, limits.max_sessions))
        self._idle: list[tuple[SmtpClient, float, bool]] = []
        self._cooldown_until = 0.0
        self._cooldown_reason = ""
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """One message's turn: its intent may start; it gets a session next."""
        self._check_cooldown()
        try:
            await _acquire(self._admission, self.limits.acquire_wait_s)
        except TimeoutError as exc:
            raise TransientError(
                f"{self._where}: no turn to send within {self.limits.acquire_wait_s}s"
            ) from exc
        try:
            yield
        finally:
            self._admission.release()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """A session for one transaction; returned to the pool afterwards unless discarded."""
        self._check_cooldown()
        try:
            await _acquire(self._slots, self.limits.acquire_wait_s)
        except TimeoutError as exc:
            raise TransientError(
                f"{self._where}: all {self.limits.max_sessions} SMTP sessions stayed busy for "
                f"{self.limits.acquire_wait_s}s"
            ) from exc
        try:
            session = self._take_idle()
            if session is None:
                self._check_cooldown()  # another sender may have failed while we waited
                session = Session(await self._connect(), reused=False)
            try:
                yield session
            finally:
                self._give_back(session)
        finally:
            self._slots.release()

    def _check_cooldown(self) -> None:
        left = self._cooldown_until - time.monotonic()
        if left > 0:
            raise TransientError(
                f"{self._where}: not connecting for another {left:.0f}s after: "
                f"{self._cooldown_reason}"
            )

    async def _connect(self) -> SmtpClient:
        try:
            client = await self._open()
        except PipelineError as exc:
            if exc.retriable:
                self._cooldown_until = time.monotonic() + self.limits.cooldown_s
                self._cooldown_reason = str(exc)
            raise
        self.opened += 1
        return client

    def _take_idle(self) -> Session | None:
        now = time.monotonic()
        while self._idle:
            client, since, dirty = self._idle.pop()
            if now - since > self.limits.idle_s or not client.is_connected:
                self._close_later(client)
                continue
            return Session(client, reused=True, dirty=dirty)
        return None

    def _give_back(self, session: Session) -> None:
        if session.discarded or not session.client.is_connected:
            self._close_later(session.client)
        else:
            self._idle.append((session.client, time.monotonic(), session.dirty))

    def reap(self) -> None:
        """Close sessions idle for longer than ``idle_s``."""
        now = time.monotonic()
        keep = []
        for client, since, dirty in self._idle:
            if now - since > self.limits.idle_s:
                self._close_later(client)
            else:
                keep.append((client, since, dirty))
        self._idle = keep

    def _close_later(self, client: SmtpClient) -> None:
        from sender.transports.smtp import close_session  # noqa: PLC0415 - smtp imports us

        task = asyncio.create_task(close_session(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close every idle session (QUIT) and wait for closes under way."""
        idle, self._idle = self._idle, []
        for client, _since, _dirty in idle:
            self._close_later(client)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=10)


async def _acquire(semaphore: asyncio.Semaphore, timeout_s: float) -> None:
    """``semaphore.acquire()`` within ``timeout_s``; no timer when it is free (the common case),
    and ``asyncio.timeout`` (one timer) rather than ``wait_for`` (a task and a timer) when not."""
    if not semaphore.locked():
        await semaphore.acquire()
        return
    async with asyncio.timeout(timeout_s):
        await semaphore.acquire()
