"""One email.outbound record in, one email.delivery event out.

The shared consume loop (:func:`email_channels.consume.consume`) drives :class:`OutboundHandler`
and applies the error policy; this module decides what each outcome means for the campaign
service that wrote the outbound email:

============================  =====================================  =========================
what happened                 email.delivery                         record
============================  =====================================  =========================
server accepted it            ``sent`` (+ response, Message-ID)      committed
outbound_id already sent      nothing (logged, counted)              committed
server said 4xx / network     nothing yet: the loop retries with     —
fault                         capped backoff (``SENDER_RETRY_*``)
... still failing after the   ``deferred`` (+ last reply, attempts)  email.dlq, retriable=true
last attempt                                                         (replay sends it)
server said 5xx, bad address  ``rejected`` (+ code and text)         email.dlq
or too large
record is not a valid         ``rejected`` when its outbound_id can  email.dlq
OutboundEmail (CR/LF in a     be read, else nothing
header field, bad JSON)
channel unknown, disabled,    ``failed`` with the reason             email.dlq
no outbound settings
channel misconfigured (auth,  ``failed`` + email.channel-status      email.dlq
TLS, host refused)            outbound *inactive* with step/reason
============================  =====================================  =========================

Every give-up goes through :meth:`OutboundHandler.gave_up`, called by
:class:`ReportingDeadLetters` just before the loop dead-letters the record, so there is exactly
one place that turns a final error into a delivery status (:func:`delivery_outcome`).
A successful send after a channel was reported inactive reports it active again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import structlog
from pydantic import TypeAdapter, ValidationError
from structlog.contextvars import bound_contextvars

from email_channels.codec import decode
from email_channels.consume import DeadLetters
from email_channels.errors import (
    ChannelMisconfigured,
    PipelineError,
    PoisonRecord,
)
from email_channels.events import (
    ChannelState,
    ChannelStatus,
    DeliveryEvent,
    DeliveryStatus,
    Id,
    OutboundEmail,
    utcnow,
)
from sender.attachments import DEFAULT_MAX_TOTAL_BYTES, load_attachments
from sender.compose import compose
from sender.errors import ChannelUnavailable, MessageRejected, ServerReply
from sender.metrics import DELIVERIES, DUPLICATES, SEND_SECONDS

if TYPE_CHECKING:
    from email_channels.blobstore import BlobStore
    from email_channels.consume import Publisher, Record
    from email_channels.events import ChannelConfig
    from email_channels.producer import EventProducer
    from email_channels.topics import TopicNames
    from sender.ledger import SentLedger
    from sender.transports.base import TransportName
    from sender.transports.factory import TransportFactory

log = structlog.get_logger(__name__)

REPORTER = "email-sender"
"""``reported_by`` of the channel statuses this service publishes."""


class Channels(Protocol):
    """What the handler needs from the channels view (a CompactedView)."""

    def get(self, key: str) -> ChannelConfig | None: ...

    async def catch_up(self, *, timeout: float = 10.0) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    status: DeliveryStatus
    reason: str
    reply: ServerReply | None = None


def delivery_outcome(error: BaseException, *, attempts: int = 1) -> Outcome:  # noqa: PLR0911 - a table
    """The one mapping from the error that ended an outbound email to its delivery status."""
    reply = getattr(error, "reply", None)
    reply = reply if isinstance(reply, ServerReply) else None
    match error:
        case PoisonRecord():
            return Outcome(DeliveryStatus.REJECTED, f"invalid outbound email: {error}")
        case MessageRejected():
            return Outcome(DeliveryStatus.REJECTED, str(error), reply)
        case ChannelMisconfigured():
            return Outcome(
                DeliveryStatus.FAILED, f"channel misconfigured (step {error.step}): {error}"
            )
        case ChannelUnavailable():
            return Outcome(DeliveryStatus.FAILED, str(error))
        case PipelineError() if error.retriable:
            return Outcome(
                DeliveryStatus.DEFERRED,
                f"not sent after {attempts} attempts: {error}; the record is in email.dlq and "
                "can be replayed",
                reply,
            )
        case PipelineError():
            return Outcome(DeliveryStatus.FAILED, str(error))
        case _:
            return Outcome(DeliveryStatus.FAILED, f"internal error ({type(error).__name__})")


class OutboundHandler:
    """Sends one OutboundEmail; a ``RecordHandler`` for the shared consume loop."""

    def __init__(
        self,
        *,
        channels: Channels,
        transports: TransportFactory,
        publisher: Publisher,
        topics: TopicNames,
        ledger: SentLedger,
        blobs: BlobStore,
        max_attachment_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    ) -> None:
        self._channels = channels
        self._transports = transports
        self._publisher = publisher
        self._topics = topics
        self._ledger = ledger
        self._blobs = blobs
        self._max_attachment_bytes = max_attachment_bytes
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._unpublished: dict[str, DeliveryEvent] = {}
        self._reported: dict[str, ChannelState] = {}

    # --- the happy path ---

    async def __call__(self, record: Record) -> None:
        attempt = self._count_attempt(record)
        outbound = decode(OutboundEmail, record.value)
        with bound_contextvars(outbound_id=outbound.outbound_id, channel_id=outbound.channel_id):
            try:
                await self._handle(outbound, attempt)
            except PipelineError as exc:
                if exc.retriable:
                    log.info("send failed, will retry", error=str(exc), attempt=attempt)
                raise
            self._attempts.pop(_record_id(record), None)

    async def _handle(self, outbound: OutboundEmail, attempt: int) -> None:
        pending = self._unpublished.get(outbound.outbound_id)
        if pending is not None:  # sent, but its event did not reach Kafka last time
            await self._publish_sent(pending)
            return
        if outbound.outbound_id in self._ledger:
            DUPLICATES.inc()
            log.info("outbound handled", outcome="duplicate")
            return
        channel = await self._channel(outbound.channel_id)
        transport = self._transports(channel)
        contents = await load_attachments(
            outbound, self._blobs, max_total_bytes=self._max_attachment_bytes
        )
        composed = compose(outbound, channel, contents)
        started = time.perf_counter()
        result = await transport.send(composed)
        elapsed = time.perf_counter() - started
        # From here on the message is out: never send it again, whatever happens next.
        self._ledger.add(outbound.outbound_id)
        SEND_SECONDS.labels(result.transport).observe(elapsed)
        event = DeliveryEvent(
            outbound_id=outbound.outbound_id,
            channel_id=outbound.channel_id,
            conversation_id=outbound.conversation_id,
            status=DeliveryStatus.SENT,
            transport=result.transport,
            reason=_refused_reason(result.refused),
            server_response=result.response,
            smtp_code=result.code,
            message_id=result.message_id,
            attempt=attempt,
        )
        self._unpublished[outbound.outbound_id] = event
        await self._publish_sent(event)
        await self._report(channel.id, ChannelState.ACTIVE)
        log.info(
            "outbound handled",
            outcome="sent",
            message_id=result.message_id,
            response=result.response,
            recipients=len(composed.envelope.recipients),
            refused=len(result.refused),
            attempt=attempt,
            send_s=round(elapsed, 3),
        )

    async def _publish_sent(self, event: DeliveryEvent) -> None:
        await self._publisher.publish(self._topics.delivery, event.outbound_id, event)
        self._unpublished.pop(event.outbound_id, None)
        DELIVERIES.labels(event.status.value, event.transport).inc()

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

    # --- giving up ---

    async def gave_up(self, record: Record, error: BaseException, attempts: int) -> None:
        """The loop is about to dead-letter ``record``: tell email.delivery why it was not sent."""
        self._attempts.pop(_record_id(record), None)
        identity = _identity(record.value)
        if identity is None:
            log.warning("outbound record unreadable, dead-lettered only", error=str(error))
            return
        outbound_id, channel_id, conversation_id = identity
        with bound_contextvars(outbound_id=outbound_id, channel_id=channel_id):
            pending = self._unpublished.get(outbound_id)
            if pending is not None:  # sent; only its event kept failing to reach Kafka
                await self._publish_sent(pending)
                return
            if outbound_id in self._ledger:
                # It was sent (by us or another replica); a failure now must not say otherwise.
                log.warning(
                    "outbound already sent; not reporting the later failure", error=str(error)
                )
                return
            outcome = delivery_outcome(error, attempts=attempts)
            transport = self._transport_name(channel_id)
            event = DeliveryEvent(
                outbound_id=outbound_id,
                channel_id=channel_id,
                conversation_id=conversation_id,
                status=outcome.status,
                transport=transport,
                reason=outcome.reason,
                server_response=str(outcome.reply) if outcome.reply else None,
                smtp_code=outcome.reply.code if outcome.reply else None,
                attempt=attempts,
            )
            await self._publisher.publish(self._topics.delivery, outbound_id, event)
            DELIVERIES.labels(outcome.status.value, transport).inc()
            if isinstance(error, ChannelMisconfigured) and channel_id:
                await self._report(
                    channel_id, ChannelState.INACTIVE, reason=str(error), step=error.step
                )
            level = log.info if outcome.status is DeliveryStatus.REJECTED else log.warning
            level(
                "outbound handled",
                outcome=outcome.status.value,
                reason=outcome.reason,
                error_kind=type(error).__name__,
                attempt=attempts,
            )

    def _transport_name(self, channel_id: str) -> TransportName | Literal["none"]:
        channel = self._channels.get(channel_id) if channel_id else None
        if channel is None or channel.outbound is None:
            return "none"
        return channel.outbound.kind

    # --- channel status ---

    async def _report(
        self,
        channel_id: str,
        state: ChannelState,
        *,
        reason: str | None = None,
        step: str | None = None,
    ) -> None:
        """Publish the channel's outbound health when it changes (as far as this replica knows)."""
        if state is ChannelState.ACTIVE and self._reported.get(channel_id) is ChannelState.ACTIVE:
            return
        now = utcnow()
        status = ChannelStatus(
            channel_id=channel_id,
            direction="outbound",
            state=state,
            reason=reason,
            step=step,
            reported_by=REPORTER,
            at=now,
            last_success_at=now if state is ChannelState.ACTIVE else None,
        )
        await self._publisher.publish(self._topics.channel_status, status.key, status)
        self._reported[channel_id] = state
        log.info("channel status reported", state=state.value, step=step, reason=reason)

    def _count_attempt(self, record: Record) -> int:
        key = _record_id(record)
        self._attempts[key] = self._attempts.get(key, 0) + 1
        return self._attempts[key]


class ReportingDeadLetters(DeadLetters):
    """The shared DeadLetters, after :meth:`OutboundHandler.gave_up` reported the outcome."""

    def __init__(
        self,
        producer: EventProducer,
        handler: OutboundHandler,
        *,
        stage: str,
        blobs: BlobStore | None = None,
    ) -> None:
        super().__init__(producer, stage=stage, blobs=blobs)
        self._handler = handler

    async def send(self, record: Record, error: BaseException, *, attempts: int = 1) -> None:
        await self._handler.gave_up(record, error, attempts)
        await super().send(record, error, attempts=attempts)


# --- helpers ----------------------------------------------------------------------------------

_ID = TypeAdapter(Id)


def _identity(value: bytes | None) -> tuple[str, str, str | None] | None:
    """(outbound_id, channel_id, conversation_id) from a record, even one that fails the model."""
    try:
        data = json.loads(value) if value is not None else None
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        outbound_id = _ID.validate_python(data.get("outbound_id"))
    except ValidationError:
        return None
    channel_id = data.get("channel_id")
    conversation_id = data.get("conversation_id")
    return (
        outbound_id,
        channel_id if isinstance(channel_id, str) else "",
        conversation_id if isinstance(conversation_id, str) else None,
    )


def _record_id(record: Record) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)


def _refused_reason(refused: dict[str, str]) -> str | None:
    if not refused:
        return None
    listed = "; ".join(f"{address}: {reply}" for address, reply in refused.items())
    return f"accepted for some recipients; refused: {listed}"


__all__ = [
    "Channels",
    "OutboundHandler",
    "Outcome",
    "ReportingDeadLetters",
    "delivery_outcome",
]
