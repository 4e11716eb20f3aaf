"""What to do with one routed record: pure, no Kafka (tested in milliseconds).

Order of the checks is the cost order: the campaign header first (another campaign's record is
skipped without decoding its JSON), then the flags every automatic answer must respect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from email_channels_contracts import (
    OutboundEmail,
    campaign_of,
    needs_no_answer,
    read_routed,
    reply_to,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

PURPOSE = "ack"
"""Idempotency purpose: the outbound id is ``ack-<hash of the email id>``, one per routed email."""


@dataclass(frozen=True)
class Skip:
    """Nothing to send for this record, and that is fine (faust's ``Skip`` idea)."""

    reason: str
    email_id: str | None = None


def answer(
    campaign_id: str,
    headers: Sequence[tuple[str, bytes]] | None,
    value: bytes | None,
    reply_text: str,
) -> OutboundEmail | Skip:
    """The acknowledgement to send for one ``email.routed`` record, or why there is none."""
    if campaign_of(headers) != campaign_id:
        return Skip("another campaign")
    email = read_routed(value)
    if needs_no_answer(email):
        return Skip("auto-reply, bounce or loop", email.email_id)
    if email.from_ is None and not email.reply_to:
        return Skip("no sender to answer", email.email_id)
    return reply_to(email, purpose=PURPOSE, text_body=reply_text)
