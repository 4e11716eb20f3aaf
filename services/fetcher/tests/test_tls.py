"""The lean TLS connect: a connection whose handshake fails leaves nothing open."""

from __future__ import annotations

import asyncio
import gc
import ssl
import sys
from typing import TYPE_CHECKING, Any

import pytest

from fetcher.sources import tls

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

    from devstack.certs import TestPki


@pytest.fixture
def unraisable() -> Iterator[list[sys.UnraisableHookArgs]]:
    """What the garbage collector could not finalise cleanly during the test (e.g. a
    transport nobody closed), collected instead of printed."""
    seen: list[sys.UnraisableHookArgs] = []
    before = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        yield seen
    finally:
        sys.unraisablehook = before


def _untrusting_context() -> ssl.SSLContext:
    """A verifying client context that does not trust the test CA."""
    return ssl.create_default_context(cafile=None, capath=None, cadata=None)


async def _fails(call: Coroutine[Any, Any, None], error: type[BaseException]) -> None:
    """Await ``call`` expecting ``error``, keeping no reference to its frames afterwards (a
    kept traceback would keep the TLS layer alive past ``gc.collect``)."""
    try:
        await call
    except error:
        return
    pytest.fail(f"expected {error.__name__}")


async def test_failed_handshake_leaves_no_unclosed_tls_transport(
    pki: TestPki, unraisable: list[sys.UnraisableHookArgs]
) -> None:
    """An untrusted certificate fails the handshake, and nothing is left for the GC to close
    even when the caller returns before the event loop turns again."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.server_cert, pki.server_key)
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        await _fails(
            tls.connect(loop, asyncio.Protocol(), "127.0.0.1", port, _untrusting_context()),
            ssl.SSLCertVerificationError,
        )
        gc.collect()  # before the loop turns: connection_lost has not run yet
        assert unraisable == []
    finally:
        server.close()
        await server.wait_closed()
