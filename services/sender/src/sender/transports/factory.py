"""Which transport sends for a channel: chosen by the channel's outbound settings.

Transports are kept per channel (each SMTP transport owns its channel's session pool; each
Graph transport its msal token cache and HTTP connections) and rebuilt when the channel's
outbound settings change; the old SMTP transport's sessions are closed, the old Graph
transport's connections at shutdown (a send may still be using them).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from email_channels.events import GraphOutbound, SmtpOutbound
from email_channels.graph_auth import GraphTokens
from email_channels.graph_client import GraphClient, MailboxThrottle
from email_channels.tls import client_contexts
from sender.errors import ChannelUnavailable
from sender.transports.graph import GraphTransport
from sender.transports.pool import PoolLimits
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

    def reap(self) -> None:
        """Close connections idle for too long."""
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...


class ChannelTransports:
    """The production factory: SMTP (pooled sessions) and Exchange Online (Graph sendMail)."""

    def __init__(
        self,
        *,
        host_policy: HostPolicy,
        secrets: SecretBox | None,
        ca_file: Path | None,
        smtp_timeout: float,
        local_hostname: str | None = None,
        limits: PoolLimits | None = None,
        graph_throttle_wait_s: float = 0.0,
    ) -> None:
        self._host_policy = host_policy
        self._secrets = secrets
        self._tls = client_contexts(extra_ca_file=ca_file)
        self._smtp_timeout = smtp_timeout
        self._local_hostname = local_hostname
        self._limits = limits or PoolLimits()
        self._graph_throttle_wait_s = graph_throttle_wait_s
        self._smtp: dict[str, tuple[SmtpOutbound, SmtpTransport]] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._ca_file = ca_file
        self._graph: dict[str, tuple[GraphOutbound, GraphTransport]] = {}
        self._graph_throttle = MailboxThrottle()
        self._retired_graph: list[GraphTransport] = []

    def __call__(self, channel: ChannelConfig) -> Transport:
        match channel.outbound:
            case SmtpOutbound() as smtp:
                known = self._smtp.get(channel.id)
                if known is not None and (known[0] is smtp or known[0] == smtp):
                    return known[1]
                if known is not None:  # settings changed: new sessions from now on
                    task = asyncio.create_task(known[1].aclose())
                    self._retired.add(task)
                    task.add_done_callback(self._retired.discard)
                transport = SmtpTransport(
                    smtp,
                    host_policy=self._host_policy,
                    secrets=self._secrets,
                    tls_context=self._tls[smtp.verify_tls],
                    timeout=self._smtp_timeout,
                    local_hostname=self._local_hostname,
                    limits=self._limits,
                )
                self._smtp[channel.id] = (smtp, transport)
                return transport
            case GraphOutbound() as graph:
                return self._graph_transport(channel, graph)
            case None:
                raise ChannelUnavailable(f"channel {channel.id} has no outbound settings")

    def _graph_transport(self, channel: ChannelConfig, graph: GraphOutbound) -> Transport:
        """One per channel's settings: msal's token cache (and a rotated refresh token) and the
        HTTP connections live as long as the channel's Exchange settings do."""
        known = self._graph.get(channel.id)
        if known is not None and (known[0] is graph or known[0] == graph):
            return known[1]
        if known is not None:  # settings changed: the old connections close at shutdown
            self._retired_graph.append(known[1])
        tokens = GraphTokens(
            graph, secrets=self._secrets, ca_file=self._ca_file, timeout_s=self._smtp_timeout
        )
        client = GraphClient(
            graph,
            tokens,
            tls=self._tls[True],
            throttle=self._graph_throttle,
            timeout_s=self._smtp_timeout,
            max_wait_s=self._graph_throttle_wait_s,
            host_policy=self._host_policy,
        )
        transport = GraphTransport(client, tokens)
        self._graph[channel.id] = (graph, transport)
        return transport

    def reap(self) -> None:
        """Close idle SMTP sessions (httpx closes Graph's idle connections itself)."""
        for _settings, transport in self._smtp.values():
            transport.pool.reap()

    async def aclose(self) -> None:
        transports, self._smtp = list(self._smtp.values()), {}
        for _settings, transport in transports:
            await transport.aclose()
        graphs = [t for _, t in self._graph.values()] + self._retired_graph
        self._graph, self._retired_graph = {}, []
        for graph in graphs:
            await graph.aclose()
        if self._retired:
            await asyncio.wait(set(self._retired), timeout=10)
