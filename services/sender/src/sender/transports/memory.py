"""An in-memory transport for tests and demos: keeps what it was given, fails on request.

Like httpx's ``MockTransport``: shipped beside the real transports, so the handler can be
tested without a network. ``fail_with`` is a queue of errors raised by the next sends, one
per send, before any message is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sender.transports.base import SendResult, TransportName

if TYPE_CHECKING:
    from sender.transports.base import BeforeData, ComposedEmail


@dataclass
class MemoryTransport:
    name: TransportName = "smtp"
    response: str = "250 2.0.0 Ok: queued"
    sent: list[ComposedEmail] = field(default_factory=list)
    fail_with: list[Exception] = field(default_factory=list)
    fail_after_intent: list[Exception] = field(default_factory=list)
    """Errors raised after ``before_data`` ran (e.g. DeliveryUncertain), one per send."""
    refused: dict[str, str] = field(default_factory=dict)
    attempts: int = 0

    async def send(
        self, email: ComposedEmail, *, before_data: BeforeData | None = None
    ) -> SendResult:
        self.attempts += 1
        if self.fail_with:
            raise self.fail_with.pop(0)
        if before_data is not None:
            await before_data()
        if self.fail_after_intent:
            raise self.fail_after_intent.pop(0)
        self.sent.append(email)
        return SendResult(
            transport=self.name,
            message_id=email.message_id,
            response=self.response,
            code=int(self.response[:3]) if self.response[:3].isdigit() else None,
            refused=dict(self.refused),
        )

    async def aclose(self) -> None:
        return None
