"""Many records in flight at once; records with the same key keep their order.

:class:`LaneConsumer` is the concurrent sibling of :func:`email_channels.consume.consume`, with
the same policy per record (:func:`~email_channels.consume.settle`: retries, give-up hook, dead
letter). It guarantees, in this order:

1. **Order per key.** Records of one partition with the same key (e.g. one conversation) form a
   *lane* and are handled one after the other; different lanes run concurrently, at most
   ``max_in_flight`` records at a time across all partitions and topics.
2. **Commit only what is settled.** A partition's committed offset never passes a record that
   is still in flight, so a crash re-delivers it (at-least-once; handlers are idempotent).
3. **Not before it is due.** An optional ``due`` hook gives a record's due time (epoch
   seconds); a record not yet due pauses its partition, which is sought back to it and resumed
   when due. Nothing waits in memory, so a partition of hour-long delays stalls no other one.
4. **Hand-over without overlap.** When partitions are revoked, records of those partitions not
   started are dropped (the next owner gets them) and the started ones are awaited (bounded by
   ``revoke_wait_s``) and committed before the rebalance completes. ``on_assigned`` runs before
   any record of newly assigned partitions is handled (e.g. catch up a state topic).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition

from email_channels.consume import RetryPolicy, _commit, _Stopping, settle

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiokafka import AIOKafkaConsumer

    from email_channels.consume import AttemptHandler, DeadLetters, GiveUp, Record

log = structlog.get_logger(__name__)

LaneKey = tuple[TopicPartition, bytes | None]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc] # aiokafka ships no types
    def __init__(self, owner: LaneConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner.assigned(set(assigned))


class LaneConsumer:
    """Drives ``handler`` over a subscribed consumer; see the module docstring."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handler: AttemptHandler,
        *,
        dead_letters: DeadLetters,
        stage: str,
        policy: RetryPolicy | None = None,
        give_up: GiveUp | None = None,
        max_in_flight: int = 256,
        due: Callable[[Record], float | None] | None = None,
        on_assigned: Callable[[set[TopicPartition]], Awaitable[None]] | None = None,
        commit_interval_s: float = 0.5,
        revoke_wait_s: float = 20.0,
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._dead_letters = dead_letters
        self._stage = stage
        self._policy = policy or RetryPolicy()
        self._give_up = give_up
        self._max_in_flight = max_in_flight
        self._due = due
        self._on_assigned = on_assigned
        self._commit_interval_s = commit_interval_s
        self._revoke_wait_s = revoke_wait_s
        self._stopping = asyncio.Event()
        self._lanes: dict[LaneKey, deque[Record]] = {}
        self._tasks: dict[LaneKey, asyncio.Task[None]] = {}
        self._in_flight: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._waiting: dict[TopicPartition, asyncio.TimerHandle] = {}
        self._count = 0
        self._settled = asyncio.Event()
        self._failure: BaseException | None = None

    @property
    def listener(self) -> ConsumerRebalanceListener:
        """Pass to ``consumer.subscribe(topics, listener=...)``."""
        return _Listener(self)

    @property
    def in_flight(self) -> int:
        return self._count

    # --- the loop ---

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set; then let started records finish and commit."""
        watcher = asyncio.create_task(self._mirror(stopping))
        last_commit = time.monotonic()
        try:
            while not self._stopping.is_set():
                if self._failure is not None:
                    raise self._failure
                if self._count >= self._max_in_flight:
                    self._settled.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._settled.wait(), timeout=0.5)
                else:
                    batches = await self._consumer.getmany(
                        timeout_ms=200, max_records=self._max_in_flight - self._count
                    )
                    for tp, records in batches.items():
                        self._dispatch_batch(tp, records)
                if time.monotonic() - last_commit >= self._commit_interval_s:
                    await self._commit_all()
                    last_commit = time.monotonic()
        finally:
            watcher.cancel()
            await self._drain(self._revoke_wait_s)
            await self._commit_all()
            for handle in self._waiting.values():
                handle.cancel()

    async def _mirror(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._stopping.set()

    def _dispatch_batch(self, tp: TopicPartition, records: list[Record]) -> None:
        if tp in self._waiting:
            return  # paused until due and sought back: the records come again
        if tp not in self._committed:
            # Fetched before on_assigned finished (or after a revoke): read them again later.
            if records and tp in self._consumer.assignment():
                self._consumer.seek(tp, records[0].offset)
            return
        for record in records:
            due = self._due(record) if self._due is not None else None
            if due is not None and due > time.time():
                self._wait_until_due(tp, record.offset, due)
                return
            self._dispatch(tp, record)

    def _wait_until_due(self, tp: TopicPartition, offset: int, due: float) -> None:
        self._consumer.pause(tp)
        self._consumer.seek(tp, offset)
        loop = asyncio.get_running_loop()
        self._waiting[tp] = loop.call_later(max(0.0, due - time.time()), self._resume, tp)

    def _resume(self, tp: TopicPartition) -> None:
        self._waiting.pop(tp, None)
        if tp in self._consumer.assignment():
            self._consumer.resume(tp)

    def _dispatch(self, tp: TopicPartition, record: Record) -> None:
        self._in_flight.setdefault(tp, set()).add(record.offset)
        self._next[tp] = record.offset + 1
        self._count += 1
        lane = (tp, record.key)
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque()
            self._tasks[lane] = asyncio.create_task(self._run_lane(lane, queue))
        queue.append(record)

    async def _run_lane(self, lane: LaneKey, queue: deque[Record]) -> None:
        tp = lane[0]
        try:
            while queue:
                record = queue[0]
                await settle(
                    record,
                    self._handler,
                    dead_letters=self._dead_letters,
                    policy=self._policy,
                    stopping=self._stopping,
                    stage=self._stage,
                    give_up=self._give_up,
                )
                queue.popleft()
                self._count -= 1
                self._done(tp, record.offset)
        except _Stopping:
            pass
        except Exception as exc:  # settle dead-letters handler errors: this is a bug of ours
            log.exception("lane failed", topic=tp.topic, partition=tp.partition)
            self._failure = exc
        finally:
            if self._lanes.get(lane) is queue:
                del self._lanes[lane]
                del self._tasks[lane]
            self._settled.set()

    def _done(self, tp: TopicPartition, offset: int) -> None:
        offsets = self._in_flight.get(tp)
        if offsets is not None:
            offsets.discard(offset)
        self._settled.set()

    # --- commits ---

    def _position(self, tp: TopicPartition) -> int | None:
        """The offset to commit: the first record in flight, else the one after the last."""
        offsets = self._in_flight.get(tp)
        if offsets:
            return min(offsets)
        return self._next.get(tp)

    async def _commit_all(self, tps: set[TopicPartition] | None = None) -> None:
        for tp in list(tps if tps is not None else self._committed):
            position = self._position(tp)
            if position is not None and position > self._committed.get(tp, -1):
                await _commit(self._consumer, tp, position)
                self._committed[tp] = position

    async def _drain(self, timeout: float, tps: set[TopicPartition] | None = None) -> None:
        """Wait (up to ``timeout``) for started records of ``tps`` (all when None)."""
        tasks = [t for (tp, _key), t in self._tasks.items() if tps is None or tp in tps]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("records still in flight after the wait", count=len(pending))

    # --- rebalances ---

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        dropped = 0
        for (tp, _key), queue in self._lanes.items():
            if tp in revoked:
                # Keep the started head; the next owner gets the rest. Their offsets stay in
                # _in_flight, so the commit below stops before the first of them.
                while len(queue) > 1:
                    queue.pop()
                    self._count -= 1
                    dropped += 1
        for tp in revoked:
            handle = self._waiting.pop(tp, None)
            if handle is not None:
                handle.cancel()
        await self._drain(self._revoke_wait_s, revoked)
        await self._commit_all(revoked & set(self._committed))
        for tp in revoked:
            self._committed.pop(tp, None)
            self._in_flight.pop(tp, None)
            self._next.pop(tp, None)
        log.info("partitions revoked", count=len(revoked), dropped=dropped)

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        if self._on_assigned is not None and assigned:
            await self._on_assigned(assigned)
        for tp in assigned:
            self._committed.setdefault(tp, -1)
        log.info("partitions assigned", count=len(assigned))
