"""Idempotency: which outbound ids were already sent, so each is sent at most once.

The ledger is rebuilt at start-up by reading ``email.delivery`` from the beginning and keeping
the ids of "sent" events (through a :class:`~email_channels.compacted.CompactedView` of a
two-field projection), then keeps tailing it, so ids sent by other replicas show up too.

Limits, known and accepted for now:

- memory and start-up time grow with the retention of ``email.delivery`` (every replica reads
  every partition: the topic is keyed by outbound id, email.outbound by conversation id, so
  they are not co-partitioned). The dedup window *is* that retention. At scale this wants a
  compacted, co-partitioned "sent ids" topic or a TTL'd key-value store.
- a crash after the server accepted a message but before its "sent" event was acknowledged
  sends it again on restart — with the same Message-ID, which receivers can deduplicate.
- two replicas racing on the same outbound id (it was published twice, under different keys)
  can both send within the ~1 s before each sees the other's event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from email_channels.compacted import CompactedView
from email_channels.events import Contract, DeliveryStatus

if TYPE_CHECKING:
    from email_channels.settings import KafkaSettings


class DeliveryOutcome(Contract):
    """Reader-side projection of a DeliveryEvent: only what the ledger needs."""

    outbound_id: str
    status: DeliveryStatus


class SentLedger:
    """The set of outbound ids known to be sent. Once sent, always sent."""

    def __init__(self, sent: set[str] | None = None) -> None:
        self._sent: set[str] = set(sent or ())

    def __contains__(self, outbound_id: object) -> bool:
        return outbound_id in self._sent

    def __len__(self) -> int:
        return len(self._sent)

    def add(self, outbound_id: str) -> None:
        self._sent.add(outbound_id)

    async def observe(self, _key: str, outcome: DeliveryOutcome | None) -> None:
        """``on_change`` callback of the delivery view."""
        if outcome is not None and outcome.status is DeliveryStatus.SENT:
            self._sent.add(outcome.outbound_id)


def delivery_view(
    settings: KafkaSettings, ledger: SentLedger, *, client_id: str
) -> CompactedView[DeliveryOutcome]:
    """A view of email.delivery that feeds ``ledger``; ``await view.start()`` fills it."""
    return CompactedView(
        settings,
        settings.topics.delivery,
        DeliveryOutcome,
        client_id=client_id,
        on_change=ledger.observe,
        retain=False,  # the ledger holds the sent ids; the view need not hold every outcome
    )
