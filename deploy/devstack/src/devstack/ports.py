"""Free TCP ports on the loopback interface, for the servers devstack and the tests start."""

from __future__ import annotations

import contextlib
import socket

HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now; all held open together, so they differ."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for held in sockets:
            held.bind((HOST, 0))
        return [int(held.getsockname()[1]) for held in sockets]


def free_port() -> int:
    [port] = free_ports(1)
    return port
