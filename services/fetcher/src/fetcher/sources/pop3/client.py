"""The asyncio POP3 client: line commands on a Protocol, pipelined, blocks streamed.

Why not ``poplib`` in a thread: see :mod:`fetcher.sources.pop3`.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Final

from fetcher.sources.pop3.errors import Pop3ProtocolError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

_STREAM_LINE_CUT: Final = 64 * 1024
"""A streamed block's line longer than this is handed on in parts."""


class _Pending:
    __slots__ = ("at_line_start", "future", "multiline", "stream", "streaming")

    def __init__(
        self,
        future: asyncio.Future[tuple[str, bytes]],
        *,
        multiline: bool,
        stream: BlockStream | None = None,
    ) -> None:
        self.future = future
        self.multiline = multiline
        self.stream = stream
        self.streaming = False  # the +OK came: the block goes to ``stream`` as it arrives
        self.at_line_start = True  # what is left in the buffer begins a line


class BlockStream:
    """The block of a multi-line answer handed over in pieces as it arrives (``RETR`` of a large
    message), so that it is never held whole. Reading from the server pauses while
    ``high_water`` bytes wait for the reader."""

    def __init__(self, *, high_water: int, idle_timeout: float) -> None:
        self._pieces: collections.deque[memoryview] = collections.deque()
        self._waiting = 0
        self._done = False
        self._error: BaseException | None = None
        self._ready = asyncio.Event()
        self._high_water = high_water
        self._idle_timeout = idle_timeout
        self._transport: asyncio.Transport | None = None

    def feed(self, piece: bytes, transport: asyncio.Transport | None) -> None:
        if piece:
            self._pieces.append(memoryview(piece))
            self._waiting += len(piece)
            self._ready.set()
        if self._waiting >= self._high_water and transport is not None and self._transport is None:
            transport.pause_reading()
            self._transport = transport

    def finish(self) -> None:
        self._done = True
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._ready.set()

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        """The block in chunks of exactly ``size`` bytes (the last one shorter)."""
        while True:
            while self._waiting < size and not self._done and self._error is None:
                self._ready.clear()
                self._resume()
                await asyncio.wait_for(self._ready.wait(), self._idle_timeout)
            if self._error is not None:
                raise self._error
            if self._waiting == 0 and self._done:
                return
            yield self._take(size)

    def _take(self, size: int) -> bytes:
        parts: list[memoryview] = []
        wanted = size
        while wanted and self._pieces:
            piece = self._pieces.popleft()
            if len(piece) > wanted:
                self._pieces.appendleft(piece[wanted:])
                piece = piece[:wanted]
            parts.append(piece)
            wanted -= len(piece)
        chunk = b"".join(parts)
        self._waiting -= len(chunk)
        if self._waiting < self._high_water // 2:
            self._resume()
        return chunk

    def _resume(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.resume_reading()


class Pop3Protocol(asyncio.Protocol):
    """Line protocol: commands go out in order, answers come back in the same order.

    An answer is the status line (``+OK ...`` / ``-ERR ...``) and, for a multi-line command
    answered ``+OK``, the dot-terminated block after it (dot-unstuffed).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._scanned = 0
        self._queue: list[_Pending] = []
        self.lost = asyncio.Event()
        self._greeting: asyncio.Future[tuple[str, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        error = exc or ConnectionResetError("the POP3 server closed the connection")
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(error)
            if pending.stream is not None:
                pending.stream.fail(error)
        self._queue.clear()

    def expect(
        self, *, multiline: bool, stream: BlockStream | None = None
    ) -> asyncio.Future[tuple[str, bytes]]:
        future: asyncio.Future[tuple[str, bytes]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(future, multiline=multiline, stream=stream))
        self._drain()
        return future

    def send(
        self, line: str, *, multiline: bool = False, stream: BlockStream | None = None
    ) -> asyncio.Future[tuple[str, bytes]]:
        """Send a command; its answer's future. With ``stream``, the future holds only the
        status line and the block goes to ``stream`` as it arrives."""
        if any(c in line for c in "\r\n\0"):
            raise ValueError("a POP3 command may not contain CR, LF or NUL")
        assert self.transport is not None
        future = self.expect(multiline=multiline, stream=stream)
        self.transport.write(line.encode() + b"\r\n")
        return future

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._drain()

    def _drain(self) -> None:  # noqa: C901 - one state machine: status, block, streamed block
        while self._queue:
            head = self._queue[0]
            if head.streaming:
                if not self._stream_block(head):
                    return
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[:end]).decode("utf-8", "replace")
            if not status.startswith(("+OK", "-ERR")):
                self._fail(head, Pop3ProtocolError(f"unexpected answer {status[:80]!r}"))
                return
            if head.stream is not None:
                self._start_stream(head, status, end)
                continue
            block = b""
            if head.multiline and status.startswith("+OK"):
                start = end + 2
                # The block ends with CRLF "." CRLF; an empty block is just "." CRLF.
                if self._buffer[start : start + 3] == b".\r\n":
                    stop, after = start, start + 3
                else:
                    found = self._buffer.find(b"\r\n.\r\n", max(start, self._scanned - 4))
                    if found < 0:
                        self._scanned = len(self._buffer)
                        return
                    stop, after = found + 2, found + 5
                block = unstuff(bytes(self._buffer[start:stop]))
            else:
                after = end + 2
            del self._buffer[:after]
            self._scanned = 0
            self._queue.pop(0)
            if not head.future.done():
                head.future.set_result((status, block))

    def _start_stream(self, head: _Pending, status: str, end: int) -> None:
        """The status line of a streamed command: answer it; a +OK block follows."""
        assert head.stream is not None
        del self._buffer[: end + 2]
        if head.multiline and status.startswith("+OK"):
            head.streaming = True
        else:
            head.stream.finish()
            self._queue.pop(0)
        if not head.future.done():
            head.future.set_result((status, b""))

    def _stream_block(self, head: _Pending) -> bool:
        """Hand what is buffered of a streamed block to its stream, dot-unstuffed; True when
        the block's end came. Complete lines go out; a line longer than
        ``_STREAM_LINE_CUT`` goes out in parts (a mail without line breaks is not held whole)."""
        stream = head.stream
        assert stream is not None
        buffer = self._buffer
        if head.at_line_start and buffer[:3] == b".\r\n":
            stop, after = 0, 3
        else:
            found = buffer.find(b"\r\n.\r\n")
            stop, after = (found + 2, found + 5) if found >= 0 else (-1, -1)
        if stop >= 0:
            stream.feed(
                unstuff(bytes(buffer[:stop]), line_start=head.at_line_start), self.transport
            )
            del buffer[:after]
            stream.finish()
            self._queue.pop(0)
            return True
        last = buffer.rfind(b"\r\n")
        if last >= 0:
            cut, line_start = last + 2, True
        elif len(buffer) > _STREAM_LINE_CUT:
            cut, line_start = len(buffer) - 1, False  # the last byte may be the CR of a CRLF
        else:
            return False
        stream.feed(unstuff(bytes(buffer[:cut]), line_start=head.at_line_start), self.transport)
        del buffer[:cut]
        head.at_line_start = line_start
        return False

    def _fail(self, head: _Pending, error: Exception) -> None:
        if not head.future.done():
            head.future.set_exception(error)
        if head.stream is not None:
            head.stream.fail(error)
        if self.transport is not None:
            self.transport.close()


def unstuff(block: bytes, *, line_start: bool = True) -> bytes:
    """Undo RFC 1939 byte-stuffing: a line starting with "." was sent with one more.
    ``line_start``: ``block`` begins at the start of a line (not in the middle of one)."""
    if line_start and block.startswith(b".."):
        block = block[1:]
    return block.replace(b"\r\n..", b"\r\n.")
