"""TLS for mail connections with a small read buffer, shared by the IMAP and POP3 sources.

asyncio's ``SSLProtocol`` allocates a 256 KiB read buffer per connection
(``SSLProtocol.max_size``), i.e. 256 MB for 1,000 idle mailboxes. A TLS record carries at most
16 KiB of plaintext, so a buffer of one record loses nothing but the chance to read several
records per wakeup (a bulk download still drains the socket, one record per read; a record
split across reads is joined by the TLS object's memory BIO). :class:`LeanSSLProtocol`
sets ``max_size`` for our connections only (Kafka's keep the default); we build it ourselves,
the way ``loop.create_connection(ssl=...)`` and ``loop.start_tls`` do internally (CPython 3.11).
"""

from __future__ import annotations

import asyncio
from asyncio import sslproto
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import ssl

TLS_READ_BUFFER: Final = 16 * 1024 + 256
"""One full TLS record (16 KiB plaintext + header, MAC and padding) instead of asyncio's
256 KiB. Measured with 1,000 idle IMAPS mailboxes (bench/bench_fetcher.py): two records cost
110 KiB per mailbox, of which the buffer was 33 KiB."""


class LeanSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a small read buffer (module docstring)."""

    max_size = TLS_READ_BUFFER


async def connect(
    loop: asyncio.AbstractEventLoop,
    protocol: asyncio.Protocol,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
) -> None:
    """TCP, then (with ``context``) TLS through :class:`LeanSSLProtocol`; raises what failed."""
    if context is None:
        await loop.create_connection(lambda: protocol, host, port)
        return
    waiter: asyncio.Future[None] = loop.create_future()
    tls = LeanSSLProtocol(loop, protocol, context, waiter, server_hostname=host)
    try:
        transport, _ = await loop.create_connection(lambda: tls, host, port)
    except BaseException:
        _discard(tls)  # no TCP connection: the TLS layer was never used
        raise
    try:
        await waiter  # the handshake: a certificate error is raised here
    except BaseException:
        transport.close()
        _discard(tls)
        raise


async def start_tls(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    protocol: asyncio.Protocol,
    context: ssl.SSLContext,
    host: str,
) -> asyncio.Transport:
    """``loop.start_tls`` with :class:`LeanSSLProtocol` (same steps as CPython 3.11's)."""
    waiter: asyncio.Future[None] = loop.create_future()
    tls = LeanSSLProtocol(
        loop, protocol, context, waiter, server_hostname=host, call_connection_made=False
    )
    transport.pause_reading()
    transport.set_protocol(tls)
    made = loop.call_soon(tls.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        made.cancel()
        resumed.cancel()
        _discard(tls)
        raise
    app: asyncio.Transport = tls._app_transport  # noqa: SLF001 - what start_tls returns too
    return app


def _discard(tls: LeanSSLProtocol) -> None:
    """Mark the app-side transport of a TLS layer that failed to come up as closed.

    ``SSLProtocol`` creates its app transport up front. When TCP or the handshake fails, the
    protocol only marks it closed in ``connection_lost``, which never runs if TCP failed and
    runs one loop turn later after a failed handshake; a caller that finishes first (a bounded
    validate, a test) leaves it to the garbage collector, which warns about an unclosed
    transport. CPython's own ``connection_lost`` does exactly this (``_closed = True``).
    """
    app = tls._app_transport  # noqa: SLF001 - see the docstring
    if app is not None:
        app._closed = True  # noqa: SLF001
