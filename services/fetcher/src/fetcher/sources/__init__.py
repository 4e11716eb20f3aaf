"""Mail sources: where a channel's mail comes from, behind one small Protocol.

A source turns a mailbox into "the messages after this cursor", the bytes of a batch of messages
and the after-fetch action on a batch. It knows its protocol and what its cursor means; it does
not know Kafka. The worker owns the order that makes "no mail lost" true::

    pending(cursor) -> per batch: fetch -> publish all (Kafka acks) -> settle all -> advance cursor

Batches are what make a mailbox fast: one UID FETCH, one round of acks, one UID STORE over a
UID set and one cursor record per batch instead of four round trips per message.

Messages are named by :class:`~email_channels.events.SourceIdentity` (IMAP folder + UIDVALIDITY
+ UID, POP3 UIDL, Graph id), the same identity the raw event carries, so a source needs no
handle type of its own. Errors leave a source only as the pipeline taxonomy
(:mod:`email_channels.errors`): each adapter maps its library's exceptions in one function.

Adapters: :mod:`fetcher.sources.imap`, :mod:`fetcher.sources.pop3`, :mod:`fetcher.sources.graph`
(Exchange Online); :mod:`fetcher.sources.fake` is an in-memory one for unit tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from email_channels.errors import ChannelMisconfigured, TransientError

if TYPE_CHECKING:
    from email_channels.blobstore import BlobRef
    from email_channels.events import ChannelConfig, FetchCursor, SourceIdentity


@dataclass(frozen=True)
class Pending:
    """What a source offers after a cursor.

    ``cursor`` is where to continue from: the cursor given, or a corrected one (an IMAP
    folder whose UIDVALIDITY changed is reset). The worker stores it when it differs.
    """

    cursor: FetchCursor
    messages: Sequence[SourceIdentity]
    recheck: frozenset[str] = field(default_factory=frozenset)
    """Keys of messages that may have been published before under another identity (an IMAP
    folder renumbered by a UIDVALIDITY change): the worker compares their Message-ID and
    sha256 with what the channel published, and settles rather than re-publishes a match."""


class Outcome(StrEnum):
    """What fetching one message gave."""

    FETCHED = "fetched"
    """``raw`` holds the MIME, or (a large message) ``stored`` names it in the blob store."""
    VANISHED = "vanished"
    """Gone from the server meanwhile (another client took it): nothing to do."""
    NOT_FOR_CHANNEL = "not_for_channel"
    """Recipient-only channel and the headers do not name its address: left untouched."""
    OVERSIZE = "oversize"
    """Above the size limit: ``headers`` holds its header block, ``size`` its size."""
    UNREADABLE = "unreadable"
    """Present, but the server's answer had no readable content (counted, then dead-lettered)."""


@dataclass(frozen=True)
class StoredBody:
    """A large message the source streamed to the blob store in pieces, never held whole."""

    ref: BlobRef
    message_id: str | None


@dataclass(frozen=True)
class Fetched:
    """One message of a fetched batch."""

    message: SourceIdentity
    outcome: Outcome
    raw: bytes | None = None
    size: int | None = None
    headers: bytes | None = None
    stored: StoredBody | None = None


class MailSource(Protocol):
    """One open connection to one channel's mailbox."""

    async def open(self) -> None:
        """Connect and authenticate (ChannelMisconfigured / TransientError on failure)."""
        ...

    async def close(self) -> None:
        """Log out and release the connection; never raises."""
        ...

    async def pending(self, cursor: FetchCursor) -> Pending:
        """The messages after ``cursor``, oldest first."""
        ...

    async def fetch(self, messages: Sequence[SourceIdentity]) -> list[Fetched]:
        """One :class:`Fetched` per message, in the same order, nothing changed on the server.

        Sizes are checked before a body is downloaded; on a recipient-only channel the
        recipient headers are looked at before the body.
        """
        ...

    async def settle(self, messages: Sequence[SourceIdentity]) -> None:
        """Apply the channel's after-fetch action (seen / move / delete) to every message.

        Called only after Kafka acknowledged them all; may be called again for the same
        messages after a failure (it is idempotent).
        """
        ...

    def advance(self, cursor: FetchCursor, messages: Sequence[SourceIdentity]) -> FetchCursor:
        """``cursor`` moved past ``messages`` (pure)."""
        ...

    async def wait_for_news(self) -> None:
        """Return when there may be new mail: pushed (IDLE), or after a poll interval."""
        ...


SourceFactory = Callable[["ChannelConfig"], MailSource]
"""Builds the source for a channel's inbound settings (not connected yet)."""


class SourceUnavailable(TransientError):
    """The mail server could not be reached or did not answer; reconnect after a backoff.

    ``step`` names where it failed (dns, tcp, tls, auth, folder, fetch, settle), like
    :class:`~email_channels.errors.ChannelMisconfigured` does.
    """

    def __init__(self, message: str, *, step: str) -> None:
        super().__init__(message)
        self.step = step


class SourceRegistry:
    """Picks the source factory for a channel by its inbound kind (imap, pop3, graph)."""

    def __init__(self, factories: Mapping[str, SourceFactory]) -> None:
        self._factories = dict(factories)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._factories)

    def supports(self, channel: ChannelConfig) -> bool:
        return channel.inbound is not None and channel.inbound.kind in self._factories

    def __call__(self, channel: ChannelConfig) -> MailSource:
        if channel.inbound is None or channel.inbound.kind not in self._factories:
            kind = channel.inbound.kind if channel.inbound else None
            raise ChannelMisconfigured(
                f"inbound kind {kind!r} is not fetched by this release", step="config"
            )
        return self._factories[channel.inbound.kind](channel)
