"""An in-memory table built from a compacted topic: key -> latest value, tombstones delete.

Used wherever a service needs the config (config-api's state, the sender's channels, the
fetcher's owned channels). It reads from the beginning without a consumer group, so every
replica sees everything (or only ``partitions`` when given), then keeps tailing.

Read-your-writes: after producing a record at (partition, offset), ``wait_for`` returns once
the view has applied it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Generic, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from email_channels.codec import decode, decode_key
from email_channels.errors import PoisonRecord, TransientError
from email_channels.events import Contract

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from email_channels.settings import KafkaSettings

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=Contract)

TOPIC_WAIT = 10.0
"""Seconds :meth:`CompactedView.start` waits for a topic that was only just created."""


async def _partitions_of(consumer: AIOKafkaConsumer, topic: str, *, wait: float) -> set[int]:
    """The topic's partition ids from fresh metadata; empty if it does not appear in ``wait`` s.

    ``consumer.partitions_for_topic`` only knows topics the client already tracks (a consumer
    without a subscription tracks none), so ask the cluster directly. A topic created a moment
    ago may be listed only once its partitions have leaders: poll briefly.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        # aiokafka has no public call that returns a fresh partition list.
        cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001
        available = cluster.partitions_for_topic(topic)
        if available or loop.time() >= deadline:
            return set(available or ())
        await asyncio.sleep(0.2)


partitions_of = _partitions_of
"""Public name of :func:`_partitions_of` for other readers of a single partition."""


class CompactedView(Generic[M]):
    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        model: type[M],
        *,
        client_id: str,
        partitions: set[int] | None = None,
        on_change: Callable[[str, M | None], Awaitable[None]] | None = None,
        retain: bool = True,
        skip: Callable[[Sequence[tuple[str, bytes]]], bool] | None = None,
    ) -> None:
        """``retain=False`` keeps no items, only calls ``on_change``: for readers that fold
        the topic into state of their own and would otherwise hold everything twice.
        ``skip(headers)`` true: the record is passed over without decoding (e.g. what this
        very process wrote and has applied already)."""
        self.topic = topic
        self._model = model
        self._settings = settings
        self._client_id = client_id
        self._partitions = partitions
        self._on_change = on_change
        self._retain = retain
        self._skip = skip
        self._items: dict[str, M] = {}
        self._positions: dict[int, int] = {}
        self._caught_up = asyncio.Event()
        self._advanced = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.poison_count = 0
        self.failure: BaseException | None = None

    # --- lifecycle ---

    async def start(self, *, timeout: float = 60.0) -> None:
        """Start reading from the beginning and wait until the view has caught up."""
        consumer = AIOKafkaConsumer(
            **self._settings.client_kwargs(),
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        self._consumer = consumer
        available = await _partitions_of(consumer, self.topic, wait=min(timeout, TOPIC_WAIT))
        if not available:
            await consumer.stop()
            self._consumer = None
            raise TransientError(f"topic {self.topic} does not exist (run ensure-topics)")
        wanted = sorted(available if self._partitions is None else available & self._partitions)
        tps = [TopicPartition(self.topic, p) for p in wanted]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps) if tps else {}
        self._targets = {tp.partition: offset for tp, offset in ends.items()}
        self._positions = {tp.partition: 0 for tp in tps}
        self._check_caught_up()
        self._task = asyncio.create_task(self._run(), name=f"compacted-view:{self.topic}")
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout)
        except TimeoutError as exc:
            await self.stop()
            raise TransientError(f"reading {self.topic} did not catch up in {timeout}s") from exc
        log.info("view caught up", topic=self.topic, items=len(self._items))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # A reader that died has logged its error already (see _run).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    # --- reads ---

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def get(self, key: str) -> M | None:
        return self._items.get(key)

    def items(self) -> Iterator[tuple[str, M]]:
        return iter(list(self._items.items()))

    def values(self) -> list[M]:
        return list(self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    async def wait_for(self, partition: int, offset: int, *, timeout: float = 10.0) -> None:
        """Return once the record at ``offset`` of ``partition`` has been applied."""

        def applied() -> bool:
            return self.failure is not None or self._positions.get(partition, -1) > offset

        async with self._advanced:
            try:
                await asyncio.wait_for(self._advanced.wait_for(applied), timeout)
            except TimeoutError as exc:
                raise TransientError(
                    f"{self.topic}[{partition}]@{offset} not read back within {timeout}s"
                ) from exc
        if self.failure is not None:
            raise TransientError(f"the reader of {self.topic} died: {self.failure!r}")

    async def catch_up(self, *, timeout: float = 10.0) -> None:
        """Return once the view holds everything written to the topic before this call.

        For a reader that finds a key missing and must know whether it is missing or merely
        not read yet (e.g. a record that refers to a channel created a moment ago).
        """
        consumer = self._consumer
        if consumer is None:
            raise TransientError(f"view of {self.topic} is not started")
        tps = list(consumer.assignment())
        ends = await consumer.end_offsets(tps) if tps else {}

        def applied() -> bool:
            return self.failure is not None or all(
                self._positions.get(tp.partition, 0) >= end for tp, end in ends.items()
            )

        async with self._advanced:
            try:
                await asyncio.wait_for(self._advanced.wait_for(applied), timeout)
            except TimeoutError as exc:
                raise TransientError(f"{self.topic} not caught up within {timeout}s") from exc
        if self.failure is not None:
            raise TransientError(f"the reader of {self.topic} died: {self.failure!r}")

    # --- the reader ---

    def _check_caught_up(self) -> None:
        if all(self._positions.get(p, 0) >= end for p, end in self._targets.items()):
            self._caught_up.set()

    async def _run(self) -> None:
        """Read until cancelled; a reader that dies marks the view failed (not caught up),
        so readiness checks and read-your-writes waits stop trusting stale contents."""
        try:
            await self._read()
        except Exception as exc:
            self.failure = exc
            self._caught_up.clear()
            log.exception("view reader died; the view is stale", topic=self.topic)
            async with self._advanced:
                self._advanced.notify_all()
            raise

    async def _read(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            skip = self._skip
            for tp, records in batches.items():
                for record in records:
                    if skip is None or not skip(record.headers):
                        await self._apply(record.key, record.value, record.offset)
                    self._positions[tp.partition] = record.offset + 1
            # Positions also advance past transaction markers and compacted gaps.
            for tp in consumer.assignment():
                with contextlib.suppress(Exception):
                    self._positions[tp.partition] = max(
                        self._positions.get(tp.partition, 0), await consumer.position(tp)
                    )
            self._check_caught_up()
            async with self._advanced:
                self._advanced.notify_all()

    async def _apply(self, raw_key: bytes | None, value: bytes | None, offset: int) -> None:
        key = decode_key(raw_key)
        if key is None:
            self.poison_count += 1
            log.warning("record without key ignored", topic=self.topic, offset=offset)
            return
        item: M | None
        if value is None:
            item = None
            self._items.pop(key, None)
        else:
            try:
                item = decode(self._model, value)
            except PoisonRecord as exc:
                self.poison_count += 1
                log.warning(
                    "undecodable record kept out of the view",
                    topic=self.topic,
                    key=key,
                    offset=offset,
                    error=str(exc),
                )
                return
            if self._retain:
                self._items[key] = item
        if self._on_change is not None:
            await self._on_change(key, item)
