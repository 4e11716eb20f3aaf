"""Which channels this fetcher runs: the consumer-group assignment of email.channels partitions.

Each channel is fetched by exactly one fetcher at a time because each partition of
email.channels is assigned to exactly one member of the group ``<prefix>email-fetcher``:

- the group's consumer reads the channel configs of its assigned partitions and *never
  commits*: on every assignment it starts again from the beginning (the topic is compacted,
  so that is the current config of each channel plus recent history);
- before a partition's workers start, the same partition numbers of email.fetch-cursors
  (co-partitioned: same key, same partition count) are read without a group, and the channels
  partition is read up to the end offset noted at assignment — so each channel starts once,
  with its latest config and its latest cursor;
- after that, config records apply as they come: a new revision restarts the worker,
  disabled or deleted (tombstone) stops it;
- on revocation, the partitions' workers are stopped (in-flight message finished, cursor
  stored) *before* the rebalance completes, so the next owner reads their final cursors.
  aiokafka rebalances eagerly: every rebalance revokes everything, then assigns anew.

Known gap: a fetcher cut off from the group coordinator (long GC pause, network partition)
keeps fetching until it notices it was removed; another member may own its channels
meanwhile. Mail is still not lost (duplicates are possible, which dedupe removes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from email_channels.codec import decode, decode_key
from email_channels.compacted import CompactedView
from email_channels.consume import make_consumer
from email_channels.errors import PipelineError, PoisonRecord
from email_channels.events import ChannelConfig, FetchCursor
from email_channels.health import group_problem
from fetcher.metrics import PARTITIONS

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from email_channels.consume import Record
    from email_channels.settings import KafkaSettings
    from fetcher.supervisor import Supervisor

log = structlog.get_logger(__name__)

CursorLoader = Callable[[set[int]], Awaitable[dict[str, FetchCursor]]]
"""Reads email.fetch-cursors for the given partition numbers: channel id -> cursor."""

_RETRY_PREPARE_S = 1.0


async def read_cursors(
    kafka: KafkaSettings, partitions: set[int], *, client_id: str
) -> dict[str, FetchCursor]:
    """The cursors of ``partitions`` of email.fetch-cursors, read once without a group."""
    view = CompactedView(
        kafka, kafka.topics.fetch_cursors, FetchCursor, client_id=client_id, partitions=partitions
    )
    await view.start()
    try:
        return dict(view.items())
    finally:
        await view.stop()


@dataclass
class _Partition:
    """An assigned partition of email.channels, from assignment until its workers run."""

    end: int | None = None  # end offset noted at assignment; None until prepared
    caught_up: bool = False
    pending: dict[str, ChannelConfig | None] = field(default_factory=dict)


class Ownership:
    """Runs the group consumer and tells the supervisor which channel configs it owns."""

    def __init__(
        self,
        kafka: KafkaSettings,
        supervisor: Supervisor,
        *,
        group_id: str,
        client_id: str,
        load_cursors: CursorLoader | None = None,
    ) -> None:
        self._kafka = kafka
        self._topic = kafka.topics.channels
        self._supervisor = supervisor
        self._group_id = group_id
        self._client_id = client_id
        self._load_cursors = load_cursors or self._read_cursors
        self._lock = asyncio.Lock()
        self._generation = 0
        self._partitions: dict[int, _Partition] = {}
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def partitions(self) -> set[int]:
        """Partitions of email.channels assigned to this fetcher now."""
        return set(self._partitions)

    def not_ready_reason(self) -> str | None:
        """For /readyz: a member of the fetcher group whose channels are read to the end."""
        reason = group_problem(self._consumer, self._group_id)
        if reason is not None:
            return reason
        behind = sorted(p for p, state in self._partitions.items() if not state.caught_up)
        if behind:
            return f"{self._topic} partitions {behind} not read to the end yet"
        return None

    async def run(self, stopping: asyncio.Event) -> None:
        """Follow the assignment until ``stopping`` is set, then stop workers and leave."""
        consumer = make_consumer(
            self._kafka, group_id=self._group_id, client_id=f"{self._client_id}-ownership"
        )
        consumer.subscribe([self._topic], listener=_Rebalance(self, consumer))
        self._consumer = consumer
        try:
            await consumer.start()
            log.info("following fetcher group", group_id=self._group_id, topic=self._topic)
            while not stopping.is_set():
                await self._step(consumer)
        finally:
            async with self._lock:
                await self._supervisor.stop_all()
            await consumer.stop()  # leaves the group: our partitions move on at once
            log.info("left fetcher group", group_id=self._group_id)

    # --- the loop ---

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        if any(state.end is None for state in self._partitions.values()):
            try:
                await self._prepare(consumer, self._generation)
            except (PipelineError, KafkaError) as exc:
                log.warning("cannot read cursors or end offsets yet; retrying", error=str(exc))
                await asyncio.sleep(_RETRY_PREPARE_S)
                return
        batches = await consumer.getmany(timeout_ms=500)
        positions = await self._positions(consumer)
        async with self._lock:
            # Records are kept even when a rebalance happened meanwhile: they are the first of
            # a new assignment (read from the beginning) or, if older, re-read after them in
            # order. Positions are safe too: a new assignment's partitions have no end yet.
            for tp, records in batches.items():
                for record in records:
                    await self._on_record(tp.partition, record)
            for partition, position in positions.items():
                await self._maybe_caught_up(partition, position)

    async def _prepare(self, consumer: AIOKafkaConsumer, generation: int) -> None:
        """Note the end offsets of new partitions and load their cursors."""
        numbers = {p for p, state in self._partitions.items() if state.end is None}
        tps = [TopicPartition(self._topic, p) for p in sorted(numbers)]
        ends = await consumer.end_offsets(tps)
        cursors = await self._load_cursors(numbers)
        async with self._lock:
            if generation != self._generation:
                return
            self._supervisor.load_cursors(cursors)
            for tp, end in ends.items():
                self._partitions[tp.partition].end = end
        log.info(
            "partitions prepared",
            partitions=sorted(numbers),
            cursors=len(cursors),
            end_offsets={tp.partition: end for tp, end in ends.items()},
        )

    async def _positions(self, consumer: AIOKafkaConsumer) -> dict[int, int]:
        """Positions of the partitions still being read up to their end (outside the lock)."""
        positions: dict[int, int] = {}
        for partition, state in list(self._partitions.items()):
            if state.end is None or state.caught_up:
                continue
            try:
                positions[partition] = await consumer.position(
                    TopicPartition(self._topic, partition)
                )
            except KafkaError:  # unassigned meanwhile (IllegalStateError): next round
                continue
        return positions

    async def _maybe_caught_up(self, partition: int, position: int) -> None:
        state = self._partitions.get(partition)
        if state is None or state.end is None or state.caught_up or position < state.end:
            return
        state.caught_up = True
        log.info("partition caught up; starting its channels", partition=partition)
        pending, state.pending = state.pending, {}
        for channel_id, config in pending.items():
            await self._supervisor.apply(partition, channel_id, config)

    async def _on_record(self, partition: int, record: Record) -> None:
        state = self._partitions.get(partition)
        channel_id = decode_key(record.key)
        if state is None:
            return
        if channel_id is None:
            log.warning("channel record without key ignored", partition=partition)
            return
        config: ChannelConfig | None = None
        if record.value is not None:
            try:
                config = decode(ChannelConfig, record.value)
            except PoisonRecord as exc:
                log.error(
                    "undecodable channel config: the channel is not fetched until it is fixed",
                    channel_id=channel_id,
                    partition=partition,
                    offset=record.offset,
                    error=str(exc),
                )
        if state.caught_up:
            await self._supervisor.apply(partition, channel_id, config)
        else:
            state.pending[channel_id] = config

    # --- rebalance callbacks (run by aiokafka between our steps) ---

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        numbers = {tp.partition for tp in revoked if tp.topic == self._topic}
        async with self._lock:
            self._generation += 1
            await self._supervisor.release(numbers)
            for number in numbers:
                self._partitions.pop(number, None)
            PARTITIONS.set(len(self._partitions))
        if numbers:
            log.info("partitions revoked; their channels stopped", partitions=sorted(numbers))

    async def assigned(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        tps = [tp for tp in assigned if tp.topic == self._topic]
        async with self._lock:
            self._generation += 1
            if tps:
                await consumer.seek_to_beginning(*tps)  # never committed: always the whole topic
            for tp in tps:
                self._partitions[tp.partition] = _Partition()
            PARTITIONS.set(len(self._partitions))
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in tps))

    async def _read_cursors(self, partitions: set[int]) -> dict[str, FetchCursor]:
        if not partitions:
            return {}
        return await read_cursors(self._kafka, partitions, client_id=f"{self._client_id}-cursors")


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    def __init__(self, ownership: Ownership, consumer: AIOKafkaConsumer) -> None:
        self._ownership = ownership
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._ownership.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._ownership.assigned(self._consumer, set(assigned))
