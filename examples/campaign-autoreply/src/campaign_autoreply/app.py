"""The service: email.routed -> acknowledgement on email.outbound, exactly once.

Exactly once (as the sender and campaign dashboards see it): the replies of one batch and the
consumed offsets are committed in ONE Kafka transaction (``send_offsets_to_transaction``). A
crash before the commit aborts both, so the batch is read again and answered again, and the
aborted replies are never seen by a ``read_committed`` reader (the sender reads that way). On
top of that, the outbound id is derived from the email id, so even a reply published twice by
some other path is sent once (the sender's idempotency ledger).

The transactional id is ``campaign-autoreply.<campaign>.<instance>``: a restarted instance with
the same name fences its predecessor (a zombie cannot commit). Run one instance per name.

Outcomes are read from email.delivery and logged for the replies this process sent.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING

import structlog

from campaign_autoreply.answer import Skip, answer
from email_channels.codec import encode, encode_key, record_headers
from email_channels.consume import make_consumer
from email_channels.errors import PipelineError
from email_channels.producer import EventProducer
from email_channels_contracts import DeliveryEvent, OutboundEmail, decode

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

    from campaign_autoreply.settings import Settings

log = structlog.get_logger(__name__)

_REMEMBERED = 10_000
"""Replies whose delivery outcome this process still logs (oldest forgotten first)."""


class Autoreply:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topics = settings.kafka.topics
        self._sent: OrderedDict[str, str] = OrderedDict()

    async def run(self, stopping: asyncio.Event) -> None:
        cfg = self._settings.autoreply
        producer = EventProducer(
            self._settings.kafka,
            client_id=f"campaign-autoreply-{cfg.instance}",
            transactional_id=f"{self._topics.prefix}campaign-autoreply.{cfg.campaign_id}."
            f"{cfg.instance}",
        )
        consumer = make_consumer(
            self._settings.kafka,
            self._topics.routed,
            group_id=f"{self._topics.prefix}{cfg.group_id}",
            client_id=f"campaign-autoreply-{cfg.instance}",
        )
        outcomes = make_consumer(
            self._settings.kafka, self._topics.delivery, group_id=None, client_id="autoreply-out"
        )
        await producer.start()
        await consumer.start()
        await outcomes.start()
        log.info("campaign autoreply ready", campaign_id=cfg.campaign_id)
        watch = asyncio.create_task(self._watch_outcomes(outcomes, stopping))
        try:
            while not stopping.is_set():
                batches = await consumer.getmany(
                    timeout_ms=int(cfg.poll_timeout_s * 1000), max_records=cfg.max_batch
                )
                if batches:
                    await self._answer_batch(producer, consumer, batches)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await outcomes.stop()
            await consumer.stop()
            await producer.stop()

    async def _answer_batch(
        self,
        producer: EventProducer,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        cfg = self._settings.autoreply
        raw = producer.raw
        try:
            async with raw.transaction():
                pending = []
                answered: list[tuple[str, str]] = []
                for records in batches.values():
                    for record in records:
                        decision = self._decide(record)
                        if isinstance(decision, Skip):
                            continue
                        key = decision.conversation_id or decision.outbound_id
                        pending.append(
                            await raw.send(
                                self._topics.outbound,
                                value=encode(decision),
                                key=encode_key(key),
                                headers=record_headers(decision, None),
                            )
                        )
                        answered.append((decision.outbound_id, decision.subject))
                await asyncio.gather(*pending)
                offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
                await raw.send_offsets_to_transaction(
                    offsets, f"{self._topics.prefix}{cfg.group_id}"
                )
        except Exception as exc:
            # Aborted: nothing of this batch is visible. Read it again from the committed offsets.
            log.warning("batch aborted; re-reading from the committed offsets", error=repr(exc))
            await consumer.seek_to_committed()
            await asyncio.sleep(1.0)
            return
        for outbound_id, subject in answered:
            log.info("answered", outbound_id=outbound_id, subject=subject)
            self._sent[outbound_id] = subject
            while len(self._sent) > _REMEMBERED:
                self._sent.popitem(last=False)

    def _decide(self, record: ConsumerRecord[bytes, bytes]) -> OutboundEmail | Skip:
        cfg = self._settings.autoreply
        try:
            return answer(cfg.campaign_id, record.headers, record.value, cfg.reply_text)
        except (PipelineError, ValueError) as exc:
            # A record we cannot answer is not ours to dead-letter (the router owns email.routed):
            # log it and move on, so one odd record never stops the campaign.
            log.warning("record not answered", offset=record.offset, error=str(exc))
            return Skip(str(exc))

    async def _watch_outcomes(self, outcomes: AIOKafkaConsumer, stopping: asyncio.Event) -> None:
        async for record in outcomes:
            if stopping.is_set():
                return
            try:
                event = decode(DeliveryEvent, record.value)
            except PipelineError:
                continue
            subject = self._sent.get(event.outbound_id)
            if subject is not None:
                log.info(
                    "delivery outcome",
                    outbound_id=event.outbound_id,
                    status=event.status.value,
                    subject=subject,
                    response=event.server_response,
                )
