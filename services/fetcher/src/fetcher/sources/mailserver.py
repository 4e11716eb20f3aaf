"""What the IMAP and POP3 sources share: their options and reaching a channel's mail server.

:class:`MailServerOptions` holds the timings, limits and trust both protocols take from the
fetcher's settings (IMAP adds its IDLE and hot-window timings on top).

Both build a source per channel from the same pieces: the decrypted password, the operator's
host policy, a TLS context chosen by the channel's ``verify_tls`` flag, the channel's own
address for recipient-only channels, the process-wide bound on large downloads and the blob
store. :class:`MailServerSourceFactory` holds them once; each protocol's factory only checks the
inbound kind and calls its source with :meth:`MailServerSourceFactory.access`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypedDict, TypeVar

from email_channels.tls import client_contexts
from fetcher.recipients import channel_recipient

if TYPE_CHECKING:
    import ssl
    from pathlib import Path

    from email_channels.blobstore import BlobStore
    from email_channels.events import ChannelConfig, ImapInbound, Pop3Inbound
    from email_channels.hostpolicy import HostPolicy
    from email_channels.secretbox import SecretBox

LARGE_DOWNLOADS_DEFAULT = 4
"""Concurrent large downloads when the caller shares no bound (tests, the probe)."""


@dataclass(frozen=True)
class MailServerOptions:
    """Timings, limits and trust shared by every IMAP and POP3 channel of this fetcher."""

    command_timeout: float = 30.0
    fetch_timeout: float = 300.0
    poll_interval: float = 60.0
    ca_file: Path | None = None
    """An extra CA file to trust besides the system's."""
    max_message_bytes: int = 50 * 1024 * 1024
    """Larger messages are not downloaded: their headers go to email.dlq."""
    batch_bytes: int = 16 * 1024 * 1024
    """Bodies downloaded by one batch command (a larger message is fetched alone)."""
    large_message_bytes: int = 1024 * 1024
    """Messages above this are downloaded one at a time under the process's bound on large
    downloads, in pieces of ``large_chunk_bytes`` straight into the blob store (when the source
    has one)."""
    large_chunk_bytes: int = 1024 * 1024


OptionsT = TypeVar("OptionsT", bound=MailServerOptions)


class ServerAccess(TypedDict):
    """The keyword arguments an IMAP or POP3 source takes besides its inbound and options."""

    password: str
    host_policy: HostPolicy
    tls_context: ssl.SSLContext
    recipient: str | None
    large_downloads: asyncio.Semaphore
    blobs: BlobStore | None


class MailServerSourceFactory(Generic[OptionsT]):
    """The shared half of :class:`~fetcher.sources.imap.ImapSourceFactory` and
    :class:`~fetcher.sources.pop3.Pop3SourceFactory` (module docstring)."""

    def __init__(
        self,
        *,
        secret_box: SecretBox,
        host_policy: HostPolicy,
        options: OptionsT,
        large_downloads: asyncio.Semaphore | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.options = options
        self._secret_box = secret_box
        self._host_policy = host_policy
        self._large = large_downloads or asyncio.Semaphore(LARGE_DOWNLOADS_DEFAULT)
        self._blobs = blobs
        self._tls = client_contexts(extra_ca_file=options.ca_file)

    def access(self, channel: ChannelConfig, inbound: ImapInbound | Pop3Inbound) -> ServerAccess:
        """How a source for ``channel`` reaches ``inbound``'s server."""
        return ServerAccess(
            password=self._secret_box.decrypt(inbound.password),
            host_policy=self._host_policy,
            tls_context=self._tls[inbound.verify_tls],
            recipient=channel_recipient(channel),
            large_downloads=self._large,
            blobs=self._blobs,
        )
