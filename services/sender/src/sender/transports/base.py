"""What every transport (SMTP now, Exchange Online / Graph next) looks like from the handler.

A transport is built for one channel (:class:`~sender.transports.factory.TransportFactory`)
and sends one composed message. It raises only errors of the shared taxonomy — each
transport maps its library's exceptions in exactly one function — so the handler never sees
``aiosmtplib`` (or ``msal``/``httpx``) types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email import policy as email_policy
from email.parser import BytesParser
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

if TYPE_CHECKING:
    from email.message import EmailMessage

TransportName = Literal["smtp", "graph"]
BeforeData: TypeAlias = Callable[[], Awaitable[None]]
"""Called at most once per message, when its turn to be sent came (SMTP: admitted by the pool,
before a session is taken), and awaited before the message itself goes out (SMTP DATA): where
the sender records its intent."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who the message is sent as and to, independent of its headers.

    Bcc recipients live only here: they are never written into the message headers.
    """

    mail_from: str
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ComposedEmail:
    """A message ready for the wire: built, checked against header injection, flattened."""

    envelope: Envelope
    message_id: str
    data: bytes
    """The message as written on the wire (CRLF line ends); its header blocks checked once."""
    utf8: bool = False
    """Non-ASCII addresses: the session needs SMTPUTF8."""
    built: EmailMessage | None = None
    """The stdlib message it was flattened from; None when written directly (plainmime)."""

    @property
    def message(self) -> EmailMessage:
        """The message as an ``EmailMessage`` (Graph needs one): parsed from ``data`` if needed."""
        if self.built is None:
            parsed = BytesParser(policy=email_policy.default).parsebytes(self.data)
            object.__setattr__(self, "built", parsed)  # a cache of what data already says
            return parsed
        return self.built


@dataclass(frozen=True, slots=True)
class SendResult:
    """The server accepted the message (for at least one recipient)."""

    transport: TransportName
    message_id: str
    response: str = ""
    """The server's final reply, e.g. "250 2.0.0 Ok: queued as 4F1A"."""
    code: int | None = None
    refused: dict[str, str] = field(default_factory=dict)
    """Recipients the server refused while accepting the others: address -> reply."""


class Transport(Protocol):
    """Sends one composed message for one channel."""

    @property
    def name(self) -> TransportName: ...

    async def send(
        self, email: ComposedEmail, *, before_data: BeforeData | None = None
    ) -> SendResult:
        """Hand the message over; raise TransientError / PermanentError subclasses otherwise.

        Must not return before the server took responsibility for the message, and must not
        raise after it did (a failure while saying goodbye is not a failed send). Calls
        ``before_data`` (and waits for it) before any byte of the message is sent; when the
        outcome cannot be known after that point, raises DeliveryUncertain.
        """
        ...

    async def aclose(self) -> None:
        """Close pooled connections."""
        ...
