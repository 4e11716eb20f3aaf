"""The error taxonomy every stage shares.

Errors are data: callers ask ``err.retriable`` instead of catching lists of types.
The consume loop in :mod:`email_channels.consume` applies the one policy::

    PipelineError                 retriable = False
    ├── TransientError            retriable = True   timeouts, resets, SMTP 4xx, Graph 429/503
    └── PermanentError            retriable = False  bad MIME, SMTP 5xx, schema error -> email.dlq
        ├── ChannelMisconfigured                     auth failed, folder missing -> channel Inactive
        └── PoisonRecord                             a Kafka record that cannot be decoded

Each adapter (IMAP, SMTP, Graph, Kafka) maps its library's exceptions onto this tree in
exactly one function, so the rest of the code never sees ``aioimaplib`` or ``aiosmtplib`` types.
"""

from __future__ import annotations

from typing import ClassVar


class PipelineError(Exception):
    """Base of every error the pipeline knows how to handle."""

    retriable: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        """A stable, short name for metrics, events and the DLQ (the class name)."""
        return type(self).__name__


class TransientError(PipelineError):
    """Try again later: the same input may well succeed."""

    retriable = True


class PermanentError(PipelineError):
    """The same input will fail again: dead-letter it with the reason."""


class ChannelMisconfigured(PermanentError):
    """A human must fix the channel (credentials, folder, host); mark it Inactive."""

    def __init__(self, message: str, *, step: str = "config") -> None:
        super().__init__(message)
        self.step = step


class PoisonRecord(PermanentError):
    """A record on a topic that does not decode into its contract model."""
