"""One outbound record in: the message sent at most once, its outcome reported.

The shared lane consumer (:class:`email_channels.lanes.LaneConsumer`) drives
:class:`OutboundHandler` over ``email.outbound`` and its retry topics, many records at a time
with per-conversation order, and applies the error policy; reporting lives in
:mod:`sender.reporting`, retry topics in :mod:`sender.retries`. Per record, in this order:

1. a sent event that did not reach Kafka last time is published now, nothing is sent;
2. the ledger (``email.delivery``) is asked what became of the outbound id:
   sent / unknown -> skip; failed / rejected -> skip unless it is a DLQ replay; already handed to
   a later retry level -> skip; an intent (``sending``) of another process without an outcome ->
   ``unknown``, not sent — unless the channel's ``delivery_guarantee`` is at-least-once;
3. channel, attachments, compose (header-injection checks), then the transport sends; the
   intent ``sending`` is published and acknowledged when the message's turn to be sent came,
   before its first SMTP command (MAIL FROM; so a refused envelope gives the intent and then
   ``rejected`` or ``deferred``), always before DATA;
4. ``sent`` with the server's reply and the generated Message-ID; channel reported active;
5. a transient failure goes to the next retry topic with a ``deferred`` event; after the last
   level, or on any permanent error, the loop gives up: ``DeliveryReporter.gave_up`` publishes
   the final status and the record goes to email.dlq.

Two records of the same outbound id are never handled at the same time in one process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

import structlog
from structlog.contextvars import bind_contextvars, reset_contextvars

from email_channels.codec import decode, header
from email_channels.consume import Publisher
from email_channels.errors import PipelineError
from email_channels.events import ChannelState, DeliveryStatus, OutboundEmail
from email_channels.headers import REPLAY_HEADER
from sender.attachments import DEFAULT_MAX_TOTAL_BYTES, load_attachments
from sender.compose import compose
from sender.errors import ChannelUnavailable
from sender.metrics import DUPLICATES, send_seconds
from sender.reporting import DeliveryReporter, TransportLabel, delivery_outcome

if TYPE_CHECKING:
    from email_channels.blobstore import BlobStore
    from email_channels.codec import Headers
    from email_channels.consume import Record
    from email_channels.events import ChannelConfig
    from email_channels.topics import TopicNames
    from sender.ledger import DeliveryLedger
    from sender.retries import RetrySchedule
    from sender.transports.factory import TransportFactory

log = structlog.get_logger(__name__)
_debug_enabled = logging.getLogger(__name__).isEnabledFor


class Channels(Protocol):
    """What the handler needs from the channels view (a CompactedView)."""

    def get(self, key: str) -> ChannelConfig | None: ...

    async def catch_up(self, *, timeout: float = 10.0) -> None: ...


class RawPublisher(Publisher, Protocol):
    """A Publisher that can also re-publish a record's bytes as they are (retry topics)."""

    async def publish_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> object: ...


class OutboundHandler:
    """Sends one OutboundEmail; an ``AttemptHandler`` for the shared consume loop."""

    def __init__(
        self,
        *,
        channels: Channels,
        transports: TransportFactory,
        publisher: RawPublisher,
        topics: TopicNames,
        ledger: DeliveryLedger,
        blobs: BlobStore,
        retries: RetrySchedule | None = None,
        max_attachment_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        instance: bytes | None = None,
    ) -> None:
        self._channels = channels
        self._transports = transports
        self._publisher = publisher
        self._ledger = ledger
        self._blobs = blobs
        self._retries = retries
        self._max_attachment_bytes = max_attachment_bytes
        self.reporter = DeliveryReporter(
            publisher=publisher,
            topics=topics,
            ledger=ledger,
            transport_of=self._transport_name,
            instance=instance,
        )
        self._mine: set[str] = set()
        """Outbound ids whose intent this process published: their outcome is known here."""
        self._busy: dict[str, asyncio.Future[None] | None] = {}
        """Outbound ids being handled -> a future for those waiting their turn (None: nobody)."""

    async def __call__(self, record: Record, attempt: int) -> None:
        outbound = decode(OutboundEmail, record.value)
        level = self._retries.level(record) if self._retries is not None else 0
        tokens = bind_contextvars(
            outbound_id=outbound.outbound_id, channel_id=outbound.channel_id, retry_level=level
        )
        try:
            await self._exclusive(outbound.outbound_id)
            try:
                await self._handle(record, outbound, attempt, level)
            finally:
                self._release(outbound.outbound_id)
        finally:
            reset_contextvars(**tokens)

    async def _exclusive(self, outbound_id: str) -> None:
        """Wait until no other record of ``outbound_id`` is being handled here, then take it.

        The lanes keep one conversation's records in order, but the same outbound id can come
        in two lanes (a retry topic, a record published twice under two keys). Two dict
        operations when nobody else holds the id (the common case); a future only when one
        must wait. ``asyncio.wait`` (not ``await future``): a cancelled waiter must not cancel
        the future others wait on.
        """
        busy = self._busy
        while outbound_id in busy:
            waiter = busy[outbound_id]
            if waiter is None:
                waiter = busy[outbound_id] = asyncio.get_running_loop().create_future()
            await asyncio.wait({waiter})
        busy[outbound_id] = None

    def _release(self, outbound_id: str) -> None:
        waiter = self._busy.pop(outbound_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _handle(
        self, record: Record, outbound: OutboundEmail, attempt: int, level: int
    ) -> None:
        if await self.reporter.publish_pending(outbound.outbound_id):
            return
        tries = level + attempt  # sends tried so far, this one included
        if not await self._may_send(record, outbound, level, tries):
            return
        channel = await self._channel(outbound.channel_id)
        transport = self._transports(channel)
        contents = await load_attachments(
            outbound, self._blobs, max_total_bytes=self._max_attachment_bytes
        )
        composed = compose(outbound, channel, contents)

        async def record_intent() -> None:
            await self.reporter.sending(outbound, attempt=tries, transport=transport.name)
            self._mine.add(outbound.outbound_id)

        started = time.perf_counter()
        try:
            result = await transport.send(composed, before_data=record_intent)
        except PipelineError as exc:
            if exc.retriable and self._retries is not None and self._retries.has_next(level):
                due = await self._retries.schedule(record, level + 1, self._publisher)
                await self.reporter.deferred(
                    outbound, exc, attempt=tries, transport=transport.name, level=level + 1, due=due
                )
                log.info("outbound handled", outcome="deferred", error=str(exc), attempt=tries)
                return
            raise
        elapsed = time.perf_counter() - started
        send_seconds(result.transport).observe(elapsed)
        await self.reporter.sent(outbound, result, attempt=tries)
        self._mine.discard(outbound.outbound_id)
        if not self.reporter.reported_active(channel.id):
            await self.reporter.channel(channel.id, ChannelState.ACTIVE)
        if _debug_enabled(logging.DEBUG):  # one line per message only at debug: info would cost
            log.debug(  # CPU at full rate, and so would building a line that is dropped
                "outbound handled",
                outcome="sent",
                message_id=result.message_id,
                response=result.response,
                recipients=len(composed.envelope.recipients),
                refused=len(result.refused),
                attempt=tries,
                send_s=round(elapsed, 3),
            )

    async def _may_send(
        self,
        record: Record,
        outbound: OutboundEmail,
        level: int,
        tries: int,
    ) -> bool:
        """What the ledger says about this outbound id (see the module docstring, step 2)."""
        entry = self._ledger.get(outbound.outbound_id)
        if entry is None:
            return True
        status = entry.status
        replay = header(record.headers, REPLAY_HEADER) is not None
        if status in {DeliveryStatus.SENT, DeliveryStatus.UNKNOWN} or (status.final and not replay):
            DUPLICATES.inc()
            log.info("outbound handled", outcome="duplicate", earlier=status.value)
            return False
        if status is DeliveryStatus.DEFERRED and entry.retry_level > level and not replay:
            log.info("outbound handled", outcome="duplicate", earlier="handed to a later retry")
            return False
        if status is DeliveryStatus.SENDING and outbound.outbound_id not in self._mine:
            channel = self._channels.get(outbound.channel_id)
            if channel is not None and channel.delivery_guarantee == "at-least-once":
                log.warning("intent without outcome found; sending again (at-least-once)")
                return True
            await self.reporter.unknown_after_takeover(
                outbound, attempt=tries, transport=self._transport_name(outbound.channel_id)
            )
            log.warning("outbound handled", outcome="unknown", reason="intent without outcome")
            return False
        return True

    async def _channel(self, channel_id: str) -> ChannelConfig:
        channel = self._channels.get(channel_id)
        if channel is None:
            # Maybe created a moment ago and not read yet: catch up once before deciding.
            await self._channels.catch_up()
            channel = self._channels.get(channel_id)
        if channel is None:
            raise ChannelUnavailable(f"channel {channel_id} does not exist")
        if not channel.enabled:
            raise ChannelUnavailable(f"channel {channel_id} is disabled")
        if channel.outbound is None:
            raise ChannelUnavailable(f"channel {channel_id} has no outbound settings")
        return channel

    def _transport_name(self, channel_id: str) -> TransportLabel:
        channel = self._channels.get(channel_id) if channel_id else None
        if channel is None or channel.outbound is None:
            return "none"
        return channel.outbound.kind

    async def gave_up(self, record: Record, error: BaseException, attempts: int) -> None:
        """The give-up hook (see :meth:`DeliveryReporter.gave_up`)."""
        level = self._retries.level(record) if self._retries is not None else 0
        await self.reporter.gave_up(record, error, level + attempts)


__all__ = ["Channels", "OutboundHandler", "RawPublisher", "delivery_outcome"]
