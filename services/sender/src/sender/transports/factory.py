"""Which transport sends for a channel: chosen by the channel's outbound settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from email_channels.events import GraphOutbound, SmtpOutbound
from email_channels.graph_auth import GraphTokens
from email_channels.graph_client import GraphClient, MailboxThrottle
from email_channels.tls import client_contexts
from sender.errors import ChannelUnavailable
from sender.transports.graph import GraphTransport
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
        self._ca_file = ca_file
        self._graph: dict[str, tuple[int, GraphTransport]] = {}
        self._graph_throttle = MailboxThrottle()
        self._retired: list[GraphTransport] = []

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
            case GraphOutbound() as graph:
                return self._graph_transport(channel, graph)
            case None:
                raise ChannelUnavailable(f"channel {channel.id} has no outbound settings")

    async def aclose(self) -> None:
        """Close the Graph transports' connections (SMTP opens one session per message)."""
        transports = [t for _, t in self._graph.values()] + self._retired
        self._graph, self._retired = {}, []
        for transport in transports:
            await transport.aclose()

    def _graph_transport(self, channel: ChannelConfig, graph: GraphOutbound) -> Transport:
        """One per channel revision: msal's token cache (and a rotated refresh token) and the
        HTTP connections live as long as the channel's settings do."""
        known = self._graph.get(channel.id)
        if known is not None and known[0] == channel.revision:
            return known[1]
        if known is not None:  # settings changed: the old connections go when idle
            self._retired.append(known[1])
        tokens = GraphTokens(
            graph, secrets=self._secrets, ca_file=self._ca_file, timeout_s=self._smtp_timeout
        )
        client = GraphClient(
            graph,
            tokens,
            tls=self._tls[True],
            throttle=self._graph_throttle,
            timeout_s=self._smtp_timeout,
            host_policy=self._host_policy,
        )
        transport = GraphTransport(client, tokens)
        self._graph[channel.id] = (channel.revision, transport)
        return transport
