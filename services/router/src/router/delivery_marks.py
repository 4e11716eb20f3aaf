"""Sent mail -> marks in ``email.router-state``, so replies to it follow their thread.

Reads ``email.delivery`` (its own consumer group, read_committed) and, for every ``sent``
event with a Message-ID, writes the mark ``sent/<outbound id>`` (kind ``sent``: its Message-ID,
conversation and campaign of the outbound mail). Writing a mark twice is harmless (the same
key and value), so this loop is at-least-once through the shared consume loop. A delivery
record that does not decode is not ours to dead-letter (the sender's readers see it too): it
is logged and skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from email_channels.codec import decode
from email_channels.consume import make_consumer
from email_channels.errors import PoisonRecord
from email_channels.events import DeliveryEvent, DeliveryStatus, RouterMark
from router.marks import sent_key

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

    from email_channels.consume import Publisher, Record, RecordHandler
    from email_channels.settings import KafkaSettings

log = structlog.get_logger(__name__)


def sent_mark(event: DeliveryEvent) -> tuple[str, RouterMark] | None:
    """The mark a delivery event leaves, if any (only sent mail with a Message-ID)."""
    if event.status is not DeliveryStatus.SENT or not event.message_id:
        return None
    mark = RouterMark(
        kind="sent",
        channel_id=event.channel_id,
        outbound_id=event.outbound_id,
        message_id=event.message_id,
        conversation_id=event.conversation_id,
        campaign_id=event.campaign_id,
        at=event.at,
    )
    return sent_key(event.outbound_id), mark


class DeliveryMarks:
    def __init__(self, settings: KafkaSettings, *, group_id: str) -> None:
        self._settings = settings
        self._group_id = group_id

    def consumer(self) -> AIOKafkaConsumer:
        return make_consumer(
            self._settings,
            self._settings.topics.delivery,
            group_id=self._group_id,
            client_id=self._group_id,
        )

    def handler(self, publisher: Publisher) -> RecordHandler:
        async def handle(record: Record) -> None:
            try:
                event = decode(DeliveryEvent, record.value)
            except PoisonRecord as exc:
                log.warning(
                    "undecodable delivery record skipped",
                    partition=record.partition,
                    offset=record.offset,
                    error=str(exc),
                )
                return
            found = sent_mark(event)
            if found is not None:
                key, mark = found
                await publisher.publish(publisher.topics.router_state, key, mark)

        return handle
