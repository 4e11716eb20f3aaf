"""The sender's own errors, as leaves of the shared taxonomy (:mod:`email_channels.errors`).

::

    PipelineError
    ├── TransientError
    │   └── SendDeferred            the server said "later" (SMTP 4xx, Graph 429/503),
    │                               with its reply
    └── PermanentError
        ├── MessageRejected         refused for what the message is: SMTP 5xx, a bad address,
        │                           too large; carries the server reply when there is one
        ├── ChannelUnavailable      unknown channel, disabled, no outbound settings, or an
        │                           outbound kind this release cannot send through
        ├── DeliveryUncertain       the message was handed over but the server's answer never
        │                           came (connection lost during DATA): maybe delivered
        └── ChannelMisconfigured    (shared) auth failed, certificate not trusted, STARTTLS missing

Which delivery status each one becomes is decided in one place:
:func:`sender.handlers.delivery_outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass

from email_channels.errors import PermanentError, TransientError


@dataclass(frozen=True, slots=True)
class ServerReply:
    """What a mail server answered: an SMTP code (None for non-SMTP transports) and its text."""

    code: int | None
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code is not None else self.text


class SendDeferred(TransientError):
    """The server asked us to try again later; the reply goes into the deferred event."""

    def __init__(self, message: str, *, reply: ServerReply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class MessageRejected(PermanentError):
    """This message will never be accepted as it is (the same bytes fail again)."""

    def __init__(self, message: str, *, reply: ServerReply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class ChannelUnavailable(PermanentError):
    """The channel named by the outbound email cannot send at all right now."""


class DeliveryUncertain(PermanentError):
    """The server may have the message: sending it again could deliver it twice.

    Raised when the connection breaks after the message body was handed over and before the
    server's reply, and when a new owner finds an intent ("sending") without an outcome.
    Reported as ``unknown``, never retried blindly.
    """
