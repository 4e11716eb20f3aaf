"""aioimaplib, with the shims this fetcher needs (aioimaplib 2.0.x, pinned ``<2.1``).

- untagged ``EXISTS`` that arrive during another command are dropped by aioimaplib: our protocol
  remembers them, so mail that lands between the last search and IDLE is not left waiting;
- its response reader recurses once per line and formats every received chunk for a debug log
  even when debug is off; its FETCH command rescans the whole response on every line (quadratic
  in the batch). For a batch of a few hundred messages that is most of the CPU, so the reader
  here is a loop over offsets with the same semantics, and :class:`BatchFetch` keeps its
  parenthesis balance as it goes;
- TLS goes through :mod:`fetcher.sources.tls` (a small read buffer per connection).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from aioimaplib import IMAP4, FetchCommand, IMAP4ClientProtocol

from fetcher.sources.imap.parsing import EXISTS
from fetcher.sources.tls import connect

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable


_CRLF: Final = b"\r\n"


class BatchFetch(FetchCommand):  # type: ignore[misc]  # aioimaplib ships no types
    """A FETCH whose "is the message complete" check is O(1) per line instead of O(lines)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._balance = 0
        super().__init__(*args, **kwargs)

    def append_to_resp(self, line: bytes | bytearray, result: str = "Pending") -> None:
        if not isinstance(line, bytearray):
            if self.FETCH_MESSAGE_DATA_RE.match(line):
                self._balance = 0
            self._balance += line.count(b"(") - line.count(b")")
        super().append_to_resp(line, result)

    def wait_data(self) -> bool:
        return self._balance != 0


class ImapProtocol(IMAP4ClientProtocol):  # type: ignore[misc]  # aioimaplib ships no types
    """Remembers untagged EXISTS; reads responses in a loop (module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn_lost_cb: Callable[[Exception | None], None] | None,
    ) -> None:
        super().__init__(loop, conn_lost_cb)
        self.exists_seen = False

    def _untagged_response(self, line: bytes) -> Any:
        if EXISTS.match(line):
            self.exists_seen = True
        return super()._untagged_response(line)

    def data_received(self, d: bytes) -> None:
        pending: bytes = self.incomplete_line  # type: ignore[has-type]  # untyped base
        data = pending + d if pending else d
        self.incomplete_line = b""
        current: Any = self.current_command  # type: ignore[has-type]  # untyped base
        self.current_command = None
        self._read(data, current)

    def _read(self, data: bytes, current: Any) -> None:  # noqa: C901 - one state machine
        """aioimaplib's ``_handle_responses``, as a loop over offsets instead of a recursion."""
        view = memoryview(data)
        pos = 0
        size = len(data)
        while True:
            if pos >= size:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current is not None and current.wait_data():
                    self.current_command = current
                return
            if current is not None and current.wait_literal_data():
                rest = current.append_literal_data(view[pos:])
                pos = size - len(rest)
                if current.wait_literal_data():
                    self.current_command = current
                    return
                continue
            end = data.find(_CRLF, pos)
            if end < 0:
                self.current_command = current
                self.incomplete_line = data[pos:]
                return
            line = data[pos:end]
            pos = end + 2
            command = self._handle_line(line, current)
            literal = _literal_size(line)
            if literal is not None:
                if command is None:
                    command = _Discard()
                command.begin_literal_data(literal)
                current = command
            elif command is not None and command.wait_data():
                current = command
            else:
                current = None


class _Discard:
    """Swallows a literal nobody asked for (aioimaplib uses a throwaway ``Command``)."""

    def __init__(self) -> None:
        self._missing = 0

    def begin_literal_data(self, size: int) -> None:
        self._missing = size

    def wait_literal_data(self) -> bool:
        return self._missing > 0

    def wait_data(self) -> bool:
        return self._missing > 0

    def append_literal_data(self, data: memoryview) -> memoryview:
        taken = min(self._missing, len(data))
        self._missing -= taken
        return data[taken:]


def _literal_size(line: bytes) -> int | None:
    """``n`` when ``line`` ends with ``{n}`` (a literal of n bytes follows)."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    digits = line[start + 1 : -1]
    return int(digits) if start >= 0 and digits.isdigit() else None


class ImapClient(IMAP4):  # type: ignore[misc]  # aioimaplib ships no types
    protocol: ImapProtocol

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        running = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = ImapProtocol(running, conn_lost_cb)
        self._client_task = running.create_task(
            connect(running, self.protocol, host, port, ssl_context)
        )


async def uid_fetch(protocol: ImapProtocol, uids: str, items: str, *, timeout: float | None) -> Any:
    """``UID FETCH uids (items)`` through :class:`BatchFetch`."""
    return await protocol.execute(
        BatchFetch(
            protocol.new_tag(), uids, items, prefix="UID", loop=protocol.loop, timeout=timeout
        )
    )
