"""POP3 source (over SSL, STLS or plain): :class:`Pop3Source`, a MailSource.

Why not ``poplib`` in a thread: every command would hold a worker thread for a network round
trip, so a few hundred channels polling at once would queue behind the default executor's
threads, and ``poplib`` cannot pipeline. POP3 is a handful of line commands; the client below
speaks them on an asyncio Protocol, pipelines (RFC 2449 PIPELINING) the RETR / TOP / DELE of a
batch when the server offers it, and shares the IMAP source's lean TLS.

What the cursor means: ``FetchCursor.uidls`` holds the UIDLs taken (published or passed) that
were still on the server at the last sync. A message is new when its UIDL is not in it.

Order and deletes: a POP3 server applies DELE only when the session ends with QUIT. So
:meth:`Pop3Source.settle` sends DELE for the batch (after Kafka acknowledged it) and then QUIT,
which commits them; the next step logs in again. A crash before QUIT loses nothing: the
messages are still there and not yet in the cursor, so they are fetched and published again
under the same ``email_id`` (a duplicate consumers drop), then deleted. "Leave on server"
(``after_fetch: mark_seen``) sends no DELE; the cursor alone keeps mail from being taken twice.

Recipient-only channels read ``TOP n 0`` (the header block) before any ``RETR``; mail that is
not for the channel is neither downloaded nor deleted. Sizes come from ``LIST`` first.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog
from pydantic import SecretStr

from email_channels.blobstore import put_stream
from email_channels.errors import ChannelMisconfigured
from email_channels.events import AfterFetch, FetchCursor, Pop3Inbound, SourceIdentity, TlsMode
from fetcher.rawemail import message_id_of
from fetcher.recipients import addressed_to
from fetcher.sources import Fetched, Outcome, Pending, SourceUnavailable, StoredBody
from fetcher.sources.mailserver import (
    LARGE_DOWNLOADS_DEFAULT,
    MailServerOptions,
    MailServerSourceFactory,
)
from fetcher.sources.pop3.client import BlockStream, Pop3Protocol
from fetcher.sources.pop3.errors import Mapped, Pop3Refused, Step, map_pop3_error
from fetcher.sources.pop3.parsing import advance_uidls, parse_list, parse_uidl
from fetcher.sources.tls import connect, start_tls

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Iterator, Sequence

    from email_channels.blobstore import BlobStore
    from email_channels.events import ChannelConfig
    from email_channels.hostpolicy import HostPolicy

log = structlog.get_logger(__name__)


class Pop3Options(MailServerOptions):
    """The shared mail-server options; POP3 has none of its own."""


class Pop3Source:
    """One POP3 maildrop for one channel (a :class:`~fetcher.sources.MailSource`)."""

    def __init__(
        self,
        inbound: Pop3Inbound,
        *,
        password: str,
        host_policy: HostPolicy,
        options: Pop3Options,
        tls_context: ssl.SSLContext,
        recipient: str | None = None,
        large_downloads: asyncio.Semaphore | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self._inbound = inbound
        self._large = large_downloads or asyncio.Semaphore(LARGE_DOWNLOADS_DEFAULT)
        self._blobs = blobs
        self._password = SecretStr(password)
        self._policy = host_policy
        self._options = options
        self._tls_context = tls_context
        self._recipient = recipient
        self._protocol: Pop3Protocol | None = None
        self._numbers: dict[str, int] = {}  # UIDL -> message number in this session
        self._sizes: dict[str, int] = {}
        self._pipelining = False

    def __repr__(self) -> str:
        inbound = self._inbound
        return f"Pop3Source({inbound.username}@{inbound.host}:{inbound.port}, tls={inbound.tls})"

    # --- connection ---

    async def open(self) -> None:
        """Connect, log in and read the maildrop's UIDLs and sizes."""
        inbound = self._inbound
        if any(
            c in value
            for value in (inbound.username, self._password.get_secret_value())
            for c in "\r\n\0"
        ):
            raise ChannelMisconfigured(
                "the user name or password contains a line break or NUL", step="auth"
            )
        await self._policy.check(inbound.host, inbound.port)
        loop = asyncio.get_running_loop()
        protocol = Pop3Protocol()
        greeting = protocol.expect(multiline=False)
        context = self._tls_context if inbound.tls is TlsMode.SSL else None
        timeout = self._options.command_timeout
        with Mapped("tcp"):
            await asyncio.wait_for(
                connect(loop, protocol, inbound.host, inbound.port, context), timeout
            )
        self._protocol = protocol
        await self._ok(greeting, "greeting", "tcp")
        capabilities = await self._capabilities()
        if inbound.tls is TlsMode.STARTTLS:
            if "STLS" not in capabilities:
                raise ChannelMisconfigured(
                    "the server does not offer STLS on this port", step="tls"
                )
            await self._ok(protocol.send("STLS"), "STLS", "tls")
            assert protocol.transport is not None
            with Mapped("tls"):
                protocol.transport = await asyncio.wait_for(
                    start_tls(loop, protocol.transport, protocol, self._tls_context, inbound.host),
                    timeout,
                )
            capabilities = await self._capabilities()  # RFC 2595: forget what came before TLS
        self._pipelining = "PIPELINING" in capabilities
        await self._ok(protocol.send(f"USER {inbound.username}"), "USER", "auth")
        await self._ok(protocol.send(f"PASS {self._password.get_secret_value()}"), "PASS", "auth")
        await self._read_maildrop()
        log.debug("pop3 logged in", host=inbound.host, messages=len(self._numbers))

    async def close(self) -> None:
        """QUIT (which commits DELEs sent) and drop the connection; never raises."""
        protocol, self._protocol = self._protocol, None
        if protocol is None or protocol.transport is None:
            return
        try:
            if not protocol.lost.is_set():
                await asyncio.wait_for(protocol.send("QUIT"), 5.0)
        except Exception as exc:
            log.debug("pop3 quit failed", error=str(exc))
        finally:
            protocol.transport.close()

    # --- MailSource ---

    async def pending(self, cursor: FetchCursor) -> Pending:
        await self._connected()
        on_server = set(self._numbers)
        seen = [uidl for uidl in cursor.uidls or [] if uidl in on_server]
        if seen != (cursor.uidls or []) or cursor.uidls is None:
            cursor = cursor.model_copy(update={"uidls": seen})  # forget what left the server
        known = set(seen)
        messages = [
            SourceIdentity(protocol="pop3", uidl=uidl)
            for uidl, _ in sorted(self._numbers.items(), key=lambda item: item[1])
            if uidl not in known
        ]
        return Pending(cursor=cursor, messages=messages)

    async def fetch(self, messages: Sequence[SourceIdentity]) -> list[Fetched]:
        await self._connected()
        out = await self._not_for_channel(messages)
        wanted: list[SourceIdentity] = []
        for message in messages:
            uidl = _uidl(message)
            if uidl in out:
                continue
            if uidl not in self._numbers:
                out[uidl] = Fetched(message, Outcome.VANISHED)
            elif self._sizes.get(uidl, 0) > self._options.max_message_bytes:
                [head] = await self._many([f"TOP {self._numbers[uidl]} 0"])
                out[uidl] = Fetched(
                    message, Outcome.OVERSIZE, size=self._sizes.get(uidl), headers=head
                )
            elif self._sizes.get(uidl, 0) > self._options.large_message_bytes and self._blobs:
                out[uidl] = await self._stream(message, self._blobs)
            else:
                wanted.append(message)
        for chunk in self._chunks(wanted):
            bodies = await self._many([f"RETR {self._numbers[_uidl(m)]}" for m in chunk])
            for message, body in zip(chunk, bodies, strict=True):
                if body is None:  # -ERR for a listed message: the server could not read it
                    out[_uidl(message)] = Fetched(message, Outcome.UNREADABLE)
                else:
                    out[_uidl(message)] = Fetched(
                        message, Outcome.FETCHED, raw=body, size=len(body)
                    )
        return [out[_uidl(m)] for m in messages]

    async def _stream(self, message: SourceIdentity, blobs: BlobStore) -> Fetched:
        """``RETR`` of a large message read in pieces straight into the blob store (hashed on
        the way): the client holds at most about two pieces of it."""
        protocol = self._protocol_or_fail()
        chunk = max(self._options.large_chunk_bytes, 1)
        stream = BlockStream(high_water=2 * chunk, idle_timeout=self._options.command_timeout)
        message_id: list[str | None] = []  # read from the first piece, which is not kept

        async def pieces() -> AsyncIterator[bytes]:
            async for piece in stream.chunks(chunk):
                if not message_id:
                    message_id.append(message_id_of(piece))
                yield piece

        async with self._large:  # a bound on large downloads at once in this process
            future = protocol.send(
                f"RETR {self._numbers[_uidl(message)]}", multiline=True, stream=stream
            )
            try:
                await self._ok(future, "RETR", "fetch")
            except SourceUnavailable as exc:
                if isinstance(exc.__cause__, Pop3Refused):  # -ERR: the server cannot read it
                    return Fetched(message, Outcome.UNREADABLE)
                raise
            with Mapped("fetch"):
                ref = await put_stream(blobs, pieces())
        stored = StoredBody(ref=ref, message_id=message_id[0] if message_id else None)
        log.info("large message streamed to the blob store", uidl=_uidl(message), size=ref.size)
        return Fetched(message, Outcome.FETCHED, size=ref.size, stored=stored)

    async def _not_for_channel(self, messages: Sequence[SourceIdentity]) -> dict[str, Fetched]:
        """Recipient-only: the messages whose header block (TOP n 0) does not name the channel."""
        out: dict[str, Fetched] = {}
        if self._recipient is None:
            return out
        present = [m for m in messages if _uidl(m) in self._numbers]
        heads = await self._many([f"TOP {self._numbers[_uidl(m)]} 0" for m in present])
        for message, head in zip(present, heads, strict=True):
            if head is None:  # the server could not read it: counted, then dead-lettered
                out[_uidl(message)] = Fetched(message, Outcome.UNREADABLE)
            elif not addressed_to(head, self._recipient):
                size = self._sizes.get(_uidl(message))
                out[_uidl(message)] = Fetched(message, Outcome.NOT_FOR_CHANNEL, size=size)
        return out

    async def settle(self, messages: Sequence[SourceIdentity]) -> None:
        if self._inbound.after_fetch is not AfterFetch.DELETE:
            return  # leave on server: the cursor keeps them from being taken again
        await self._connected()
        numbers = [self._numbers[_uidl(m)] for m in messages if _uidl(m) in self._numbers]
        if not numbers:
            return
        protocol = self._protocol_or_fail()
        futures = [protocol.send(f"DELE {n}") for n in numbers]
        for future in futures:
            await self._ok(future, "DELE", "settle")
        # QUIT commits the deletes (RFC 1939 §6); the next step logs in again.
        await self._ok(protocol.send("QUIT"), "QUIT", "settle")
        self._protocol = None
        if protocol.transport is not None:
            protocol.transport.close()

    def advance(self, cursor: FetchCursor, messages: Sequence[SourceIdentity]) -> FetchCursor:
        return advance_uidls(cursor, messages)

    async def wait_for_news(self) -> None:
        """POP3 has no push, and a session sees only the maildrop as it was at login:
        log out, wait a poll interval, and let the next step log in again."""
        await self.close()
        await asyncio.sleep(self._options.poll_interval)

    # --- internals ---

    async def _connected(self) -> None:
        if self._protocol is None or self._protocol.lost.is_set():
            self._protocol = None
            await self.open()

    def _protocol_or_fail(self) -> Pop3Protocol:
        if self._protocol is None:
            raise SourceUnavailable("the POP3 connection is not open", step="tcp")
        return self._protocol

    async def _capabilities(self) -> set[str]:
        protocol = self._protocol_or_fail()
        try:
            _, block = await asyncio.wait_for(
                protocol.send("CAPA", multiline=True), self._options.command_timeout
            )
        except Pop3Refused:
            return set()
        except Exception as exc:
            error = map_pop3_error(exc, step="tcp")
            raise (error or exc) from exc
        return {line.split()[0].upper() for line in block.decode().splitlines() if line.strip()}

    async def _read_maildrop(self) -> None:
        protocol = self._protocol_or_fail()
        uidl_future = protocol.send("UIDL", multiline=True)
        list_future = protocol.send("LIST", multiline=True)
        _, uidls = await self._ok(uidl_future, "UIDL", "fetch")
        _, sizes = await self._ok(list_future, "LIST", "fetch")
        with Mapped("fetch"):
            numbered = parse_uidl(uidls)
        sized = parse_list(sizes)
        self._numbers = {uidl: n for n, uidl in numbered.items()}
        self._sizes = {uidl: sized.get(n, 0) for n, uidl in numbered.items()}

    async def _many(self, commands: list[str]) -> list[bytes | None]:
        """Multi-line commands (RETR / TOP), pipelined when offered; None for an -ERR."""
        protocol = self._protocol_or_fail()
        results: list[bytes | None] = []
        batches = [commands] if self._pipelining else [[c] for c in commands]
        for batch in batches:
            futures = [protocol.send(command, multiline=True) for command in batch]
            for command, future in zip(batch, futures, strict=True):
                try:
                    _, block = await self._ok(future, command.split()[0], "fetch")
                except SourceUnavailable as exc:
                    if isinstance(exc.__cause__, Pop3Refused):
                        results.append(None)
                        continue
                    raise
                results.append(block)
        return results

    def _chunks(self, wanted: list[SourceIdentity]) -> Iterator[list[SourceIdentity]]:
        chunk: list[SourceIdentity] = []
        used = 0
        for message in wanted:
            size = self._sizes.get(_uidl(message), 0)
            if chunk and used + size > self._options.batch_bytes:
                yield chunk
                chunk, used = [], 0
            chunk.append(message)
            used += size
        if chunk:
            yield chunk

    async def _ok(
        self, future: asyncio.Future[tuple[str, bytes]], command: str, step: Step
    ) -> tuple[str, bytes]:
        """The answer of ``command``, bounded in time; ``-ERR`` and failures come out mapped."""
        timeout = (
            self._options.fetch_timeout
            if command in {"RETR", "TOP"}
            else self._options.command_timeout
        )
        with Mapped(step):
            status, block = await asyncio.wait_for(future, timeout)
            if not status.startswith("+OK"):
                raise Pop3Refused(command, status.removeprefix("-ERR").strip())
            return status, block


def _uidl(message: SourceIdentity) -> str:
    if message.uidl is None:
        raise ValueError("a POP3 message identity needs its UIDL")
    return message.uidl


class Pop3SourceFactory(MailServerSourceFactory[Pop3Options]):
    """Builds an :class:`Pop3Source` from a channel (a :data:`~fetcher.sources.SourceFactory`)."""

    def __call__(self, channel: ChannelConfig) -> Pop3Source:
        inbound = channel.inbound
        if not isinstance(inbound, Pop3Inbound):
            raise ChannelMisconfigured("the channel has no POP3 inbound settings", step="config")
        return Pop3Source(inbound, options=self.options, **self.access(channel, inbound))
