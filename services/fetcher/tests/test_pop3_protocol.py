"""The POP3 client's pure parts: answer framing split anywhere, dot-unstuffing, UIDL/LIST."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from email_channels.errors import ChannelMisconfigured
from email_channels.events import FetchCursor, SourceIdentity
from fetcher.sources import SourceUnavailable
from fetcher.sources.pop3 import (
    BlockStream,
    Pop3Protocol,
    Pop3ProtocolError,
    Pop3Refused,
    advance_uidls,
    map_pop3_error,
    parse_list,
    parse_uidl,
)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def stuffed(body: bytes) -> bytes:
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


@given(
    st.lists(st.sampled_from([b"hello", b".dot", b"..two", b".", b"", b"x" * 50]), max_size=8),
    st.integers(min_value=1, max_value=17),
)
async def test_multiline_answers_survive_any_split_and_are_unstuffed(lines, step):
    """RETR then NOOP, the bytes arriving in pieces of any size: both answers exact."""
    body = b"\r\n".join(lines) + b"\r\n" if lines else b""
    wire = b"+OK message follows\r\n" + stuffed(body) + b".\r\n+OK\r\n"
    protocol = Pop3Protocol()
    protocol.connection_made(_Transport())
    retr = protocol.send("RETR 1", multiline=True)
    noop = protocol.send("NOOP")
    for start in range(0, len(wire), step):
        protocol.data_received(wire[start : start + step])
    assert (await retr)[1] == body
    assert (await noop)[0] == "+OK"


async def test_an_error_to_a_multiline_command_is_one_line():
    """-ERR to RETR has no block: the next answer is not swallowed."""
    protocol = Pop3Protocol()
    protocol.connection_made(_Transport())
    retr = protocol.send("RETR 9", multiline=True)
    noop = protocol.send("NOOP")
    protocol.data_received(b"-ERR no such message\r\n+OK\r\n")
    assert (await retr)[0] == "-ERR no such message"
    assert (await noop)[0] == "+OK"


async def test_a_lost_connection_fails_what_waits():
    """Pending answers fail at once when the server goes away."""
    protocol = Pop3Protocol()
    protocol.connection_made(_Transport())
    retr = protocol.send("RETR 1", multiline=True)
    protocol.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        await retr


def test_commands_with_line_breaks_are_refused():
    """No command injection through a user name."""
    protocol = Pop3Protocol()
    protocol.connection_made(_Transport())
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        protocol.send("USER a\r\nDELE 1")


def test_uidl_and_list_lines():
    """UIDL -> number: uid, LIST -> number: size; a malformed UIDL line is a protocol error."""
    assert parse_uidl(b"1 000000017abc\r\n2 x-y\r\n") == {1: "000000017abc", 2: "x-y"}
    assert parse_list(b"1 120\r\n2 4000\r\n") == {1: 120, 2: 4000}
    with pytest.raises(Pop3ProtocolError):
        parse_uidl(b"1 has space inside\r\n")


def test_cursor_keeps_each_uidl_once_in_order():
    """advance adds new UIDLs at the end and never twice."""
    cursor = FetchCursor(channel_id="c", uidls=["a"])
    messages = [SourceIdentity(protocol="pop3", uidl=u) for u in ("b", "a", "c")]
    assert advance_uidls(cursor, messages).uidls == ["a", "b", "c"]


def test_errors_map_by_code_and_step():
    """[AUTH] -> misconfigured auth; [IN-USE] -> transient; -ERR on RETR -> transient."""
    auth = map_pop3_error(Pop3Refused("PASS", "[AUTH] Authentication failed."), step="auth")
    assert isinstance(auth, ChannelMisconfigured)
    assert auth.step == "auth"
    in_use = map_pop3_error(Pop3Refused("PASS", "[IN-USE] locked"), step="auth")
    assert isinstance(in_use, SourceUnavailable)
    retr = map_pop3_error(Pop3Refused("RETR", "no such message"), step="fetch")
    assert isinstance(retr, SourceUnavailable)
    assert map_pop3_error(RuntimeError("bug"), step="fetch") is None


@given(
    st.lists(st.sampled_from([b"hello", b".dot", b"..two", b".", b"", b"x" * 50]), max_size=12),
    st.integers(min_value=1, max_value=17),
    st.integers(min_value=1, max_value=40),
)
async def test_a_streamed_answer_comes_out_in_exact_chunks_split_anywhere(lines, step, chunk):
    """RETR streamed: the block, unstuffed, in chunks of exactly ``chunk`` bytes (the last
    shorter), then the next answer; the bytes arriving in pieces of any size."""
    body = b"\r\n".join(lines) + b"\r\n" if lines else b""
    wire = b"+OK message follows\r\n" + stuffed(body) + b".\r\n+OK\r\n"
    protocol = Pop3Protocol()
    transport = _Transport()
    protocol.connection_made(transport)
    stream = BlockStream(high_water=1 << 20, idle_timeout=1)
    retr = protocol.send("RETR 1", multiline=True, stream=stream)
    noop = protocol.send("NOOP")
    for start in range(0, len(wire), step):
        protocol.data_received(wire[start : start + step])
    assert (await retr) == ("+OK message follows", b"")
    chunks = [piece async for piece in stream.chunks(chunk)]
    assert b"".join(chunks) == body
    assert all(len(piece) == chunk for piece in chunks[:-1])
    assert (await noop)[0] == "+OK"


async def test_a_streamed_answer_pauses_the_server_while_the_reader_lags():
    """Above the high-water mark reading pauses; taking the chunks resumes it."""
    protocol = Pop3Protocol()
    transport = _Transport()
    protocol.connection_made(transport)
    stream = BlockStream(high_water=100, idle_timeout=1)
    retr = protocol.send("RETR 1", multiline=True, stream=stream)
    protocol.data_received(b"+OK\r\n" + b"y" * 98 + b"\r\n")
    await retr
    assert transport.paused
    protocol.data_received(b"z\r\n.\r\n")
    assert b"".join([piece async for piece in stream.chunks(50)]) == b"y" * 98 + b"\r\nz\r\n"
    assert not transport.paused


async def test_a_streamed_command_refused_ends_its_stream():
    """-ERR to a streamed RETR: the status comes back and the stream is empty."""
    protocol = Pop3Protocol()
    protocol.connection_made(_Transport())
    stream = BlockStream(high_water=100, idle_timeout=1)
    retr = protocol.send("RETR 9", multiline=True, stream=stream)
    protocol.data_received(b"-ERR no such message\r\n")
    assert (await retr)[0] == "-ERR no such message"
    assert [piece async for piece in stream.chunks(10)] == []


async def test_a_streamed_line_without_line_breaks_is_handed_on_before_it_ends():
    """A 200 KB line (a mail with no line breaks) reaches the stream in parts, exact."""
    protocol = Pop3Protocol()
    protocol.connection_made(_Transport())
    stream = BlockStream(high_water=1 << 20, idle_timeout=1)
    retr = protocol.send("RETR 1", multiline=True, stream=stream)
    line = b"..starts with a stuffed dot" + bytes(range(33, 127)) * 2200
    wire = b"+OK\r\n" + line
    for start in range(0, len(wire), 10_000):
        protocol.data_received(wire[start : start + 10_000])
    await retr
    chunks = stream.chunks(64 * 1024)
    first = await anext(chunks)  # before the line (and the block) ended
    protocol.data_received(b"\r\n.\r\n")
    rest = [piece async for piece in chunks]
    assert first + b"".join(rest) == line[1:] + b"\r\n"
