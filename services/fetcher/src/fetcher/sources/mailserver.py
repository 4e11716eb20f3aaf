"""What the IMAP and POP3 source factories share: reaching a channel's mail server.

Both build a source per channel from the same pieces: the decrypted password, the operator's
host policy, a TLS context chosen by the channel's ``verify_tls`` flag, the channel's own
address for recipient-only channels, the process-wide bound on large downloads and the blob
store. :class:`MailServerSourceFactory` holds them once; each protocol's factory only checks the
inbound kind and calls its source with :meth:`MailServerSourceFactory.access`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, Protocol, TypedDict, TypeVar

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


class TlsOptions(Protocol):
    """Options that name an extra CA file to trust (the IMAP and POP3 options do)."""

    @property
    def ca_file(self) -> Path | None: ...


OptionsT = TypeVar("OptionsT", bound=TlsOptions)


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
