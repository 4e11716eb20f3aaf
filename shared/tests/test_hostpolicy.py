"""Admin-supplied mail hosts: private ranges refused unless an operator allows them."""

from __future__ import annotations

import ipaddress
import ssl
from typing import TYPE_CHECKING

import pytest

from email_channels.hostpolicy import HostPolicy, HostRefused
from email_channels.tls import CaFileUnusable, client_contexts

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_loopback_private_link_local_and_multicast_are_refused_by_default(address: str) -> None:
    """Cloud metadata (169.254.169.254) and the pod network are not reachable via a channel."""
    with pytest.raises(HostRefused) as info:
        HostPolicy().check_addresses("mail.example.test", [ipaddress.ip_address(address)])
    assert info.value.step == "dns"
    assert "EMAIL_CHANNELS_ALLOWED_HOSTS" in str(info.value)


def test_public_addresses_pass() -> None:
    HostPolicy().check_addresses("imap.example.com", [ipaddress.ip_address("93.184.216.34")])


def test_allow_list_takes_cidrs_and_names() -> None:
    policy = HostPolicy.parse(" 127.0.0.1 , 10.0.0.0/8,mail.internal. ")
    policy.check_addresses("x", [ipaddress.ip_address("127.0.0.1")])
    policy.check_addresses("x", [ipaddress.ip_address("10.9.8.7")])
    policy.check_addresses("MAIL.internal", [ipaddress.ip_address("192.168.0.1")])
    with pytest.raises(HostRefused):
        policy.check_addresses("x", [ipaddress.ip_address("192.168.0.1")])


def test_one_refused_address_among_several_refuses_the_host() -> None:
    """A name resolving to a public and a private address is refused (DNS rebinding style)."""
    with pytest.raises(HostRefused):
        HostPolicy().check_addresses(
            "mixed.example",
            [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("127.0.0.1")],
        )


async def test_check_resolves_names_before_deciding() -> None:
    """`localhost` is refused because of what it resolves to, not its spelling."""
    with pytest.raises(HostRefused):
        await HostPolicy().check("localhost", 993)
    await HostPolicy.parse("127.0.0.0/8,::1").check("localhost", 993)


def test_an_unreadable_ca_file_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    """A bad EMAIL_CHANNELS_CA_FILE is an operator error, named, not a per-channel failure."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(CaFileUnusable, match=r"EMAIL_CHANNELS_CA_FILE=.*missing\.pem"):
        client_contexts(extra_ca_file=missing)
    contexts = client_contexts()
    assert contexts[True].verify_mode is ssl.CERT_REQUIRED
    assert contexts[False].verify_mode is ssl.CERT_NONE
