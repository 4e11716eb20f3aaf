"""Delivery reporting, apart from sending: what email.delivery and email.channel-status say.

One :class:`DeliveryReporter` per sender publishes every delivery event and keeps the local
:class:`~sender.ledger.DeliveryLedger` in step with what it published (the tail of
email.delivery confirms it later). :func:`delivery_outcome` is the one mapping from the error
that ended an outbound email to its final status:

============================  ===========================================================
error                         status
============================  ===========================================================
PoisonRecord                  ``rejected`` (invalid outbound email, e.g. CR/LF in a header)
MessageRejected               ``rejected`` (5xx, unsendable address, too large, injection)
DeliveryUncertain             ``unknown`` (maybe delivered; never resent)
ChannelMisconfigured          ``failed`` + channel outbound *inactive* with step and reason
ChannelUnavailable            ``failed`` (unknown, disabled, no outbound settings, Graph)
transient, retries used up    ``failed`` (the record is in email.dlq, retriable: replayable)
anything else                 ``failed`` (internal error, by class name)
============================  ===========================================================

:meth:`DeliveryReporter.gave_up` is the give-up hook of the shared consume loop: it runs once
per given-up record, just before the record is dead-lettered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import structlog
from pydantic import TypeAdapter, ValidationError
from structlog.contextvars import bound_contextvars

from email_channels.errors import ChannelMisconfigured, PipelineError, PoisonRecord
from email_channels.events import (
    ChannelState,
    ChannelStatus,
    DeliveryEvent,
    DeliveryStatus,
    Id,
    utcnow,
)
from email_channels.headers import PUBLISHER_HEADER
from sender.errors import ChannelUnavailable, DeliveryUncertain, MessageRejected, ServerReply
from sender.metrics import deliveries

if TYPE_CHECKING:
    from collections.abc import Callable

    from email_channels.consume import Publisher, Record
    from email_channels.events import OutboundEmail
    from email_channels.topics import TopicNames
    from sender.ledger import DeliveryLedger
    from sender.transports.base import SendResult

log = structlog.get_logger(__name__)

REPORTER = "email-sender"
"""``reported_by`` of the channel statuses this service publishes."""

TransportLabel = Literal["smtp", "graph", "none"]


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
        case DeliveryUncertain():
            return Outcome(DeliveryStatus.UNKNOWN, str(error))
        case ChannelMisconfigured():
            return Outcome(
                DeliveryStatus.FAILED, f"channel misconfigured (step {error.step}): {error}"
            )
        case ChannelUnavailable():
            return Outcome(DeliveryStatus.FAILED, str(error))
        case PipelineError() if error.retriable:
            return Outcome(
                DeliveryStatus.FAILED,
                f"not sent after {attempts} attempts: {error}; the record is in email.dlq and "
                "can be replayed",
                reply,
            )
        case PipelineError():
            return Outcome(DeliveryStatus.FAILED, str(error))
        case _:
            return Outcome(DeliveryStatus.FAILED, f"internal error ({type(error).__name__})")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who an outbound record is about, read even from a record that fails the model."""

    outbound_id: str
    channel_id: str
    conversation_id: str | None


class DeliveryReporter:
    """Publishes delivery events and outbound channel health; remembers what it published."""

    def __init__(
        self,
        *,
        publisher: Publisher,
        topics: TopicNames,
        ledger: DeliveryLedger,
        transport_of: Callable[[str], TransportLabel],
        instance: bytes | None = None,
    ) -> None:
        """``instance``: stamped on every delivery event as the ``publisher-instance`` header
        (this process's ledger reader skips its own events)."""
        self._publisher = publisher
        self._headers = [(PUBLISHER_HEADER, instance)] if instance is not None else None
        self._topics = topics
        self._ledger = ledger
        self._transport_of = transport_of
        self._unpublished: dict[str, DeliveryEvent] = {}
        self._reported: dict[str, ChannelState] = {}

    # --- events of one outbound ---

    async def sending(
        self, outbound: OutboundEmail, *, attempt: int, transport: TransportLabel
    ) -> None:
        """The intent: published (and acknowledged) before the message goes out."""
        await self._publish(
            _event(outbound, DeliveryStatus.SENDING, transport=transport, attempt=attempt)
        )

    async def sent(self, outbound: OutboundEmail, result: SendResult, *, attempt: int) -> None:
        # From here on the message is out: whatever happens next, never send it again.
        self._ledger.record(outbound.outbound_id, DeliveryStatus.SENT)
        event = _event(
            outbound,
            DeliveryStatus.SENT,
            transport=result.transport,
            attempt=attempt,
            reason=_refused_reason(result.refused),
            server_response=result.response,
            smtp_code=result.code,
            message_id=result.message_id,
        )
        self._unpublished[outbound.outbound_id] = event
        await self.publish_pending(outbound.outbound_id)

    async def publish_pending(self, outbound_id: str) -> bool:
        """Publish a sent event that did not reach Kafka before; False when there is none."""
        event = self._unpublished.get(outbound_id)
        if event is None:
            return False
        await self._publish(event)
        self._unpublished.pop(outbound_id, None)
        return True

    async def deferred(
        self,
        outbound: OutboundEmail,
        error: PipelineError,
        *,
        attempt: int,
        transport: TransportLabel,
        level: int,
        due: float,
    ) -> None:
        reply = getattr(error, "reply", None)
        reply = reply if isinstance(reply, ServerReply) else None
        await self._publish(
            _event(
                outbound,
                DeliveryStatus.DEFERRED,
                transport=transport,
                attempt=attempt,
                reason=f"{error}; tried again at retry level {level}",
                server_response=str(reply) if reply else None,
                smtp_code=reply.code if reply else None,
                retry_level=level,
                retry_at=datetime.fromtimestamp(due, tz=UTC),
            )
        )

    async def unknown_after_takeover(
        self, outbound: OutboundEmail, *, attempt: int, transport: TransportLabel
    ) -> None:
        """An intent without an outcome, found by a new owner: maybe sent, not sent again."""
        await self._publish(
            _event(
                outbound,
                DeliveryStatus.UNKNOWN,
                transport=transport,
                attempt=attempt,
                reason="an earlier sender recorded its intent to send and stopped before "
                "reporting the outcome; the message may have been delivered and is not sent "
                "again (the channel's delivery_guarantee is at-most-once)",
            )
        )

    async def gave_up(self, record: Record, error: BaseException, attempts: int) -> None:
        """The give-up hook: tell email.delivery why the outbound was not sent."""
        identity = read_identity(record.value)
        if identity is None:
            log.warning("outbound record unreadable, dead-lettered only", error=str(error))
            return
        with bound_contextvars(outbound_id=identity.outbound_id, channel_id=identity.channel_id):
            if await self.publish_pending(identity.outbound_id):
                return  # it was sent; only its event kept failing to reach Kafka
            if identity.outbound_id in self._ledger:
                log.warning(
                    "outbound already sent; not reporting the later failure", error=str(error)
                )
                return
            outcome = delivery_outcome(error, attempts=attempts)
            event = DeliveryEvent(
                outbound_id=identity.outbound_id,
                channel_id=identity.channel_id,
                conversation_id=identity.conversation_id,
                status=outcome.status,
                transport=self._transport_of(identity.channel_id),
                reason=outcome.reason,
                server_response=str(outcome.reply) if outcome.reply else None,
                smtp_code=outcome.reply.code if outcome.reply else None,
                attempt=attempts,
            )
            await self._publish(event)
            if isinstance(error, ChannelMisconfigured) and identity.channel_id:
                await self.channel(
                    identity.channel_id, ChannelState.INACTIVE, reason=str(error), step=error.step
                )
            level = log.info if outcome.status is DeliveryStatus.REJECTED else log.warning
            level(
                "outbound handled",
                outcome=outcome.status.value,
                reason=outcome.reason,
                error_kind=type(error).__name__,
                attempt=attempts,
            )

    async def _publish(self, event: DeliveryEvent) -> None:
        await self._publisher.publish(
            self._topics.delivery, event.outbound_id, event, headers=self._headers
        )
        self._ledger.record(event.outbound_id, event.status, event.retry_level or 0)
        deliveries(event.status.value, event.transport).inc()

    # --- channel health ---

    def reported_active(self, channel_id: str) -> bool:
        """True when this replica last reported the channel's outbound active."""
        return self._reported.get(channel_id) is ChannelState.ACTIVE

    async def channel(
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


def _event(
    outbound: OutboundEmail,
    status: DeliveryStatus,
    *,
    transport: TransportLabel,
    attempt: int,
    **fields: Any,
) -> DeliveryEvent:
    # model_validate (pydantic-core, in C) rather than model_construct: for this model the
    # latter costs about five times as much (its defaults go through Python-level helpers).
    return DeliveryEvent.model_validate(
        {
            "outbound_id": outbound.outbound_id,
            "channel_id": outbound.channel_id,
            "conversation_id": outbound.conversation_id,
            "campaign_id": outbound.campaign_id,  # the router's thread affinity for sent mail
            "status": status,
            "transport": transport,
            "attempt": attempt,
            **fields,
        }
    )


_ID = TypeAdapter(Id)


def read_identity(value: bytes | None) -> Identity | None:
    """The outbound's identity from a record, even one that fails the model."""
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
    return Identity(
        outbound_id,
        channel_id if isinstance(channel_id, str) else "",
        conversation_id if isinstance(conversation_id, str) else None,
    )


def _refused_reason(refused: dict[str, str]) -> str | None:
    if not refused:
        return None
    listed = "; ".join(f"{address}: {reply}" for address, reply in refused.items())
    return f"accepted for some recipients; refused: {listed}"


__all__ = [
    "REPORTER",
    "DeliveryReporter",
    "Identity",
    "Outcome",
    "delivery_outcome",
    "read_identity",
]
