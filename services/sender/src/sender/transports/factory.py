"""Which transport sends for a channel: chosen by the channel's outbound settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from email_channels.events import GraphOutbound, SmtpOutbound
from email_channels.tls import client_contexts
from sender.errors import ChannelUnavailable
from sender.transports.smtp import SmtpTransport

if TYPE_CHECKING:
    from pathlib import Path

    from email_channels.events import ChannelConfig
    from email_channels.hostpolicy import HostPolicy
    from email_channels.secretbox import SecretBox
    from sender.transports.base import Transport


class TransportFactory(Protocol):
    def __call__(self, channel: ChannelConfig) -> Transport:
        """A transport for ``channel``; ChannelUnavailable when it has none this release knows."""
        ...


class ChannelTransports:
    """The production factory: SMTP today; Exchange Online (Graph sendMail) slots in here."""

    def __init__(
        self,
        *,
        host_policy: HostPolicy,
        secrets: SecretBox | None,
        ca_file: Path | None,
        smtp_timeout: float,
        local_hostname: str | None = None,
    ) -> None:
        self._host_policy = host_policy
        self._secrets = secrets
        self._tls = client_contexts(extra_ca_file=ca_file)
        self._smtp_timeout = smtp_timeout
        self._local_hostname = local_hostname

    def __call__(self, channel: ChannelConfig) -> Transport:
        match channel.outbound:
            case SmtpOutbound() as smtp:
                return SmtpTransport(
                    smtp,
                    host_policy=self._host_policy,
                    secrets=self._secrets,
                    tls_context=self._tls[smtp.verify_tls],
                    timeout=self._smtp_timeout,
                    local_hostname=self._local_hostname,
                )
            case GraphOutbound():
                raise ChannelUnavailable(
                    f"channel {channel.id} sends through Exchange Online, which this sender "
                    "release does not support yet"
                )
            case None:
                raise ChannelUnavailable(f"channel {channel.id} has no outbound settings")
