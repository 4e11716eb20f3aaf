"""Exactly once, as readers of email.routed see it: one Kafka transaction per batch.

Consume -> transform -> produce with Kafka transactions (KIP-98) through aiokafka:

1. ``getmany`` a batch of email.raw records (read_committed, auto-commit off), keeping only
   partitions this instance still owns;
2. begin a transaction; start preparing every record of the batch (blob store, parsing), then
   handle them in record order: routed records, dead letters and router-state marks are *sent*
   into the transaction without waiting for each ack;
3. wait for all the acks, add the batch's next offsets to the transaction
   (``send_offsets_to_transaction``) and commit: the routed records, the marks and the
   consumed offsets become visible together or not at all;
4. on any failure, abort: nothing of the batch is visible, the consumer is rewound to the
   batch's first offsets and the batch is routed again.

A crash at any point leaves an open transaction that is aborted -- at once by the restarted
instance, whose producer has the same transactional id and fences the old one when it starts,
or by the broker after ``transaction_timeout_s`` -- and offsets that were not committed: the
batch is routed again and read_committed readers see each email once. A rebalance waits for the
batch in flight (``on_partitions_revoked`` takes the batch lock), so an instance never commits
offsets of a partition it no longer owns, and a newly assigned partition is routed only after
the table of marks has caught up with what its previous owner committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.producer.transaction_manager import TransactionState
from prometheus_client import Counter, Histogram

from email_channels.codec import encode, encode_key, record_headers
from email_channels.consume import handle_with_policy
from email_channels.errors import PermanentError, TransientError
from email_channels.producer import map_publish_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from email_channels.codec import Headers
    from email_channels.consume import DeadLetters, Record, RetryPolicy
    from email_channels.events import Contract
    from email_channels.topics import TopicNames
    from router.handlers import RawRecordHandler

log = structlog.get_logger(__name__)

STAGE = "router"

TRANSACTIONS = Counter(
    "email_router_transactions_total", "Routing transactions by outcome", ["outcome"]
)
BATCH_SIZE = Histogram(
    "email_router_batch_records",
    "Records per committed routing transaction",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
)


class ProducerBroken(PermanentError):
    """The transactional producer was fenced (another instance with our transactional id) or
    cannot abort: the process stops; a restart resumes from the committed offsets."""


class StaleMembership(TransientError):
    """The consumer group asked this member to rejoin while a batch was routed: it aborts."""


def _rejoin_pending(consumer: AIOKafkaConsumer) -> bool:
    """Whether the group coordinator told this member to rejoin (a rebalance began, or the
    member's generation or id is no longer valid), as the heartbeat learned it.

    The fence aiokafka cannot give (its ``TxnOffsetCommit`` is v0: no generation, KIP-447):
    a member that knows it is stale does not commit. aiokafka has no public getter; without
    the attribute (another aiokafka version) the check says no.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    rejoin = getattr(coordinator, "_rejoin_needed_fut", None)
    return isinstance(rejoin, asyncio.Future) and rejoin.done()


def _check_membership(consumer: AIOKafkaConsumer) -> None:
    if _rejoin_pending(consumer):
        raise StaleMembership(
            "the group is rebalancing or expelled this member: the batch is not committed "
            "(its partitions may have moved)"
        )


class TransactionalPublisher:
    """The handlers' :class:`~email_channels.consume.Publisher` inside a transaction.

    ``publish`` hands the record to the producer and returns without waiting for the ack;
    it never raises, so a failure cannot make a record's retry publish twice: the failure
    surfaces in :meth:`flush`, which fails the whole transaction.
    """

    def __init__(self, producer: AIOKafkaProducer, topics: TopicNames) -> None:
        self._producer = producer
        self.topics = topics
        self._sent: list[tuple[str, asyncio.Future[Any]]] = []

    async def publish(
        self,
        topic: str,
        key: str,
        event: Contract | None,
        *,
        headers: Headers | None = None,
        **header_values: str,
    ) -> object:
        return await self._send(
            topic,
            key,
            encode(event) if event is not None else None,
            record_headers(event, headers, **header_values),
        )

    async def publish_encoded(
        self, topic: str, key: str, event: Contract, value: bytes, *, headers: Headers
    ) -> object:
        """:meth:`publish` of ``event`` whose record value the caller encoded already."""
        return await self._send(topic, key, value, record_headers(event, headers))

    async def _send(
        self, topic: str, key: str, value: bytes | None, headers: Headers
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any]
        try:
            future = await self._producer.send(
                topic, value=value, key=encode_key(key), headers=headers
            )
        except Exception as exc:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        future.add_done_callback(_retrieve)
        self._sent.append((topic, future))
        return future

    async def flush(self) -> None:
        """Wait for every record sent since the last flush; raise the first failure."""
        sent, self._sent = self._sent, []
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        for (topic, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                raise map_publish_error(result, topic) or result

    def discard(self) -> None:
        self._sent.clear()


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a send's outcome as seen (an aborted batch's sends fail, and nobody awaits them)."""
    if not future.cancelled():
        future.exception()


class RoutingLoop(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Routes email.raw batch by batch, each batch one transaction (module docstring)."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        publisher: TransactionalPublisher,
        handler: RawRecordHandler,
        dead_letters: DeadLetters,
        policy: RetryPolicy,
        group_id: str,
        catch_up: Callable[[], Awaitable[None]],
        before_commit: Callable[[], Awaitable[None]] | None = None,
        batch_max_records: int = 500,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._publisher = publisher
        self._handler = handler
        self._dead_letters = dead_letters
        self._policy = policy
        self._group_id = group_id
        self._catch_up = catch_up
        self._before_commit = before_commit
        self._batch_max_records = batch_max_records
        self._lock = asyncio.Lock()
        self._needs_catch_up = True

    # --- rebalance listener (aiokafka calls these around every rebalance) ---

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:  # the batch in flight commits or aborts first
            log.info("partitions revoked", partitions=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._needs_catch_up = True
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned))

    # --- the loop ---

    async def run(self, stopping: asyncio.Event) -> None:
        failures = 0
        while not stopping.is_set():
            batches = await self._consumer.getmany(
                timeout_ms=200, max_records=self._batch_max_records
            )
            if not batches:
                continue
            async with self._lock:
                owned = self._consumer.assignment()
                batches = {
                    tp: records for tp, records in batches.items() if tp in owned and records
                }
                if not batches:
                    continue
                if self._needs_catch_up:
                    await self._catch_up()
                    self._needs_catch_up = False
                ok = await self._transact(batches, stopping)
            if ok:
                failures = 0
            elif not stopping.is_set():
                failures += 1
                delay = self._policy.backoff(failures)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=delay)

    async def _transact(
        self, batches: dict[TopicPartition, list[Record]], stopping: asyncio.Event
    ) -> bool:
        """One batch, one transaction; True when it committed. Aborts (and rewinds) otherwise."""
        first = {tp: records[0].offset for tp, records in batches.items()}
        ends: dict[TopicPartition, int] = {}
        committed = False
        self._handler.prefetch(record for records in batches.values() for record in records)
        try:
            await self._producer.begin_transaction()
            for tp, records in batches.items():
                for record in records:
                    await handle_with_policy(
                        record,
                        self._handler,
                        dead_letters=self._dead_letters,
                        policy=self._policy,
                        stopping=stopping,
                        stage=STAGE,
                    )
                    ends[tp] = record.offset + 1
            if self._before_commit is not None:
                await self._before_commit()  # e.g. the blobs of the batch made durable
            await self._publisher.flush()
            _check_membership(self._consumer)
            await self._producer.send_offsets_to_transaction(ends, self._group_id)
            await self._producer.commit_transaction()
            committed = True
        except ProducerFenced as exc:
            raise ProducerBroken(f"transactional producer fenced: {exc}") from exc
        except Exception as exc:
            if stopping.is_set():
                log.info("stopped in the middle of a batch; its transaction is aborted")
            else:
                log.warning(
                    "routing transaction failed; the batch is aborted and routed again",
                    error=repr(exc),
                    records=sum(len(r) for r in batches.values()),
                )
        finally:
            self._handler.drop_prefetched()
            if committed:
                self._handler.marks.committed()
                TRANSACTIONS.labels("committed").inc()
                BATCH_SIZE.observe(sum(len(r) for r in batches.values()))
            else:
                self._handler.marks.aborted()
                self._publisher.discard()
                await self._abort()
                self._rewind(first)
                TRANSACTIONS.labels("aborted").inc()
        return committed

    async def _abort(self) -> None:
        """Abort the open transaction, if any; a producer that cannot abort is broken."""
        state = self._producer._txn_manager.state  # noqa: SLF001 - aiokafka has no public getter
        if state is TransactionState.READY:
            return
        if state not in (TransactionState.IN_TRANSACTION, TransactionState.ABORTABLE_ERROR):
            raise ProducerBroken(f"transactional producer in state {state.name}; cannot abort")
        try:
            await self._producer.abort_transaction()
        except (KafkaError, RuntimeError) as exc:
            raise ProducerBroken(f"cannot abort the routing transaction: {exc!r}") from exc

    def _rewind(self, first: dict[TopicPartition, int]) -> None:
        owned = self._consumer.assignment()
        for tp, offset in first.items():
            if tp in owned:
                self._consumer.seek(tp, offset)
