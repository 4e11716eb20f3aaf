"""Which admin-supplied mail hosts the validate step, the fetcher and the sender may contact.

Loopback, link-local, private, multicast, reserved and unspecified addresses are refused unless
the operator allow-list (``EMAIL_CHANNELS_ALLOWED_HOSTS``: host names, IPs or CIDRs, comma
separated) permits them. The check runs on the *resolved* addresses, so a public name that
points at 127.0.0.1 is refused as well. (A DNS answer that changes between the check and the
connect is out of scope here; NetworkPolicy for mail egress covers it in production.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

from email_channels.errors import ChannelMisconfigured, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class HostRefused(ChannelMisconfigured):
    """The host resolves to an address the policy does not allow."""


@dataclass(frozen=True)
class HostPolicy:
    allowed_names: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, allow_list: str) -> HostPolicy:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for raw_item in allow_list.split(","):
            item = raw_item.strip()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                names.add(item.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def address_allowed(self, address: IPAddress) -> bool:
        if any(address in network for network in self.allowed_networks):
            return True
        return address.is_global and not address.is_multicast

    def check_addresses(self, host: str, addresses: list[IPAddress]) -> None:
        if host.lower().rstrip(".") in self.allowed_names:
            return
        refused = [a for a in addresses if not self.address_allowed(a)]
        if refused:
            raise HostRefused(
                f"host {host!r} resolves to {refused[0]}, which is loopback, link-local or "
                "private; an operator must add it to EMAIL_CHANNELS_ALLOWED_HOSTS",
                step="dns",
            )

    async def check(self, host: str, port: int) -> None:
        """Resolve ``host`` and refuse it unless every address is allowed."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            if exc.errno in {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)}:
                raise ChannelMisconfigured(f"host {host!r} does not resolve", step="dns") from exc
            raise TransientError(f"DNS lookup of {host!r} failed: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        self.check_addresses(host, addresses)
