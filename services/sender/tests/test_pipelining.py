"""PipelinedConnection: replies matched to commands in order however they arrive; content framing.

The server side here is a real loopback TCP server that answers with scripted bytes, cut at
chosen places (several replies in one read, one reply split over reads), which a full SMTP
server cannot be made to do on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiosmtplib
import pytest

from sender.transports.pipelining import DataStarted, PipelinedConnection, wire_content

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


# --- the content after 354 ----------------------------------------------------------------


def test_content_is_dot_stuffed_and_ended():
    """A line starting with '.' gets a second one; the content ends with CRLF '.' CRLF."""
    assert wire_content(b".top\r\nmid\r\n.\r\nend") == b"..top\r\nmid\r\n..\r\nend\r\n.\r\n"


def test_bare_line_ends_become_crlf():
    """Lone LF and CR are written as CRLF before dot-stuffing (nothing ends the data early)."""
    assert wire_content(b"a\n.\nb\rc\r\n") == b"a\r\n..\r\nb\r\nc\r\n.\r\n"


# --- a scripted server ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def scripted(
    script: Callable[..., object], *, timeout: float = 5.0
) -> AsyncIterator[PipelinedConnection]:
    """A PipelinedConnection to a loopback server running ``script(reader, writer)``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await script(reader, writer)  # type: ignore[misc]
        with contextlib.suppress(Exception):
            await reader.read()  # hold the connection open until the client closes it
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    _transport, connection = await loop.create_connection(
        lambda: PipelinedConnection(timeout=timeout, extensions=["pipelining", "size"]),
        "127.0.0.1",
        port,
    )
    try:
        yield connection
    finally:
        connection.close()
        server.close()
        await server.wait_closed()


async def read_lines(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    return [await reader.readline() for _ in range(count)]


async def test_replies_that_arrive_together_or_in_pieces_each_find_their_command():
    """MAIL/RCPT/RCPT/DATA replies in one write, one of them multi-line and cut mid-line,
    are matched in order; the second recipient's refusal is reported, the message accepted."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.extend(await read_lines(reader, 4))
        writer.write(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550-5.1.1 no such\r\n550 5.1.1 us")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"er\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
        content = await reader.readuntil(b"\r\n.\r\n")
        seen.append(content)
        writer.write(b"250 2.0.0 Ok: queued as 1\r\n")

    async with scripted(script) as connection:
        result = await connection.transaction(
            reset=False,
            mail=b"MAIL FROM:<a@x.example>",
            recipients=[
                ("b@x.example", b"RCPT TO:<b@x.example>"),
                ("c@x.example", b"RCPT TO:<c@x.example>"),
            ],
            content=b"Subject: hi\r\n\r\n.dot\r\n",
        )

    assert result.reply == (250, "2.0.0 Ok: queued as 1")
    assert result.refused == {"c@x.example": (550, "5.1.1 no such\n5.1.1 user")}
    assert seen[:4] == [
        b"MAIL FROM:<a@x.example>\r\n",
        b"RCPT TO:<b@x.example>\r\n",
        b"RCPT TO:<c@x.example>\r\n",
        b"DATA\r\n",
    ]
    assert seen[4] == b"Subject: hi\r\n\r\n..dot\r\n.\r\n"


async def test_every_recipient_refused_but_data_accepted_sends_an_empty_end_not_the_message():
    """RFC 2920 §3.1: DATA answered 354 after every RCPT failed gets a lone '.'; refused."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.extend(await read_lines(reader, 3))
        writer.write(b"250 Ok\r\n550 no\r\n354 go on\r\n")
        seen.append(await reader.readline())
        writer.write(b"554 no valid recipients\r\n")

    async with scripted(script) as connection:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await connection.transaction(
                reset=False,
                mail=b"MAIL FROM:<a@x.example>",
                recipients=[("b@x.example", b"RCPT TO:<b@x.example>")],
                content=b"Subject: secret\r\n\r\nbody\r\n",
            )
        assert connection.is_connected
    assert seen[-1] == b".\r\n"


async def test_a_silent_server_times_out_and_the_connection_is_aborted():
    """No reply within the timeout: TimeoutError, and the connection is not reused."""

    async def script(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await read_lines(reader, 1)

    async with scripted(script, timeout=0.3) as connection:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await connection.request(b"NOOP\r\n", 1)
        assert asyncio.get_running_loop().time() - started < 2
        assert not connection.is_connected


async def test_a_connection_lost_after_the_content_started_is_data_started():
    """The server hangs up after reading the content: DataStarted (maybe delivered)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_lines(reader, 3)
        writer.write(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        writer.transport.abort()

    async with scripted(script) as connection:
        with pytest.raises(DataStarted):
            await connection.transaction(
                reset=False,
                mail=b"MAIL FROM:<a@x.example>",
                recipients=[("b@x.example", b"RCPT TO:<b@x.example>")],
                content=b"Subject: hi\r\n\r\nbody\r\n",
            )


async def test_an_unsolicited_421_closes_the_connection():
    """A reply nobody asked for (the server shutting down an idle session) closes it."""

    async def script(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.4.2 idle too long\r\n")

    async with scripted(script) as connection:
        for _ in range(50):
            if not connection.is_connected:
                break
            await asyncio.sleep(0.02)
        assert not connection.is_connected
        assert connection.unsolicited == (421, "4.4.2 idle too long")
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await connection.request(b"NOOP\r\n", 1)


async def test_a_refused_rset_closes_the_session_and_sends_no_content():
    """RSET refused in front of MAIL/RCPT/DATA: the refusal is raised and the connection
    closed, never ended with '.' (a DATA the server took could deliver an empty message)."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.extend(await read_lines(reader, 4))
        writer.write(b"500 5.5.1 no\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
        await writer.drain()
        seen.append(await reader.read())  # whatever comes until the client closes

    async with scripted(script) as connection:
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await connection.transaction(
                reset=True,
                mail=b"MAIL FROM:<a@x.example>",
                recipients=[("b@x.example", b"RCPT TO:<b@x.example>")],
                content=b"Subject: hi\r\n\r\nbody\r\n",
            )
        assert refused.value.code == 500
        assert not connection.is_connected
        for _ in range(50):
            if len(seen) == 5:
                break
            await asyncio.sleep(0.01)
    assert seen[:4] == [
        b"RSET\r\n",
        b"MAIL FROM:<a@x.example>\r\n",
        b"RCPT TO:<b@x.example>\r\n",
        b"DATA\r\n",
    ]
    assert seen[4] == b""
