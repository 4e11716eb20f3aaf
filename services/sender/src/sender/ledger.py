"""What became of each outbound id, as far as ``email.delivery`` says: the never-twice memory.

The ledger is rebuilt at start-up by reading ``email.delivery`` from the beginning (through a
:class:`~email_channels.compacted.CompactedView` of a small projection), keeps tailing it so
outcomes of other replicas show up, and is caught up again whenever this replica is assigned
partitions of ``email.outbound`` (``SenderApp``), before it sends anything for them.

Folding rule: the last event of an id wins, except that a final status (sent, failed, rejected,
unknown) is never replaced by a non-final one (sending, deferred) — a late intent or deferral
does not make a settled outbound look open again.

The handler reads it like this:

- ``sent`` or ``unknown``: never send again (a DLQ replay neither);
- ``failed`` / ``rejected``: settled; only a DLQ replay (``dlq-replay-of`` header) sends again;
- ``sending`` by another process (or an earlier life of this one): an intent without an outcome
  — report ``unknown`` unless the channel prefers at-least-once;
- ``deferred`` at retry level N: records below level N were already handed on; skip them.

Limits, known and accepted for now: memory and start-up time grow with the retention of
``email.delivery`` (every replica reads every partition: the topic is keyed by outbound id,
email.outbound by conversation id, so they are not co-partitioned); the dedup window *is* that
retention. Two replicas racing on the same outbound id in two different records (published
twice under different keys) can both send within the moment before each sees the other's
intent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from email_channels.compacted import CompactedView
from email_channels.events import Contract, DeliveryStatus
from email_channels.headers import PUBLISHER_HEADER

if TYPE_CHECKING:
    from collections.abc import Sequence

    from email_channels.settings import KafkaSettings


class DeliveryOutcome(Contract):
    """Reader-side projection of a DeliveryEvent: only what the ledger needs."""

    outbound_id: str
    status: DeliveryStatus
    retry_level: int | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    status: DeliveryStatus
    retry_level: int = 0


class DeliveryLedger:
    """Outbound id -> the latest known outcome (see the folding rule above)."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __contains__(self, outbound_id: object) -> bool:
        """True when the id was sent."""
        entry = self._entries.get(outbound_id) if isinstance(outbound_id, str) else None
        return entry is not None and entry.status is DeliveryStatus.SENT

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, outbound_id: str) -> Entry | None:
        return self._entries.get(outbound_id)

    def record(self, outbound_id: str, status: DeliveryStatus, retry_level: int = 0) -> None:
        current = self._entries.get(outbound_id)
        if current is not None and current.status.final and not status.final:
            return
        self._entries[outbound_id] = Entry(status, retry_level)

    def add(self, outbound_id: str) -> None:
        """Mark ``outbound_id`` sent."""
        self.record(outbound_id, DeliveryStatus.SENT)

    async def observe(self, _key: str, outcome: DeliveryOutcome | None) -> None:
        """``on_change`` callback of the delivery view."""
        if outcome is not None:
            self.record(outcome.outbound_id, outcome.status, outcome.retry_level or 0)


SentLedger = DeliveryLedger
"""The earlier name, kept for readers of older code."""


def delivery_view(
    settings: KafkaSettings,
    ledger: DeliveryLedger,
    *,
    client_id: str,
    instance: bytes | None = None,
) -> CompactedView[DeliveryOutcome]:
    """A view of email.delivery that feeds ``ledger``; ``await view.start()`` fills it.

    ``instance``: this process's ``publisher-instance`` header value; its own events (already
    recorded in the ledger when published) are passed over without decoding.
    """
    mine = (PUBLISHER_HEADER, instance)

    def own(headers: Sequence[tuple[str, bytes]]) -> bool:
        return mine in headers

    return CompactedView(
        settings,
        settings.topics.delivery,
        DeliveryOutcome,
        client_id=client_id,
        on_change=ledger.observe,
        retain=False,  # the ledger holds the outcomes; the view need not hold every event
        skip=own if instance is not None else None,
    )
