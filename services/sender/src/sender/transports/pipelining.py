"""RFC 2920 command pipelining on a pooled SMTP session: one write per command group.

Why our own small protocol: aiosmtplib (still used for everything it solves — connect,
greeting, EHLO, STARTTLS, AUTH; see :func:`sender.transports.smtp.open_session`) reads one
reply per read and drops replies that arrive together, so it cannot pipeline; and it wraps
every command in ``asyncio.wait_for`` (a timer and a wake-up per command). Once a session is
set up and the server advertised ``PIPELINING``, :meth:`PipelinedConnection.take_over` hands
the session's transport (plain or TLS) to a :class:`PipelinedConnection` with
``transport.set_protocol``; aiosmtplib is not used on it again.

A transaction is two writes and two reads instead of four of each:

1. ``[RSET] MAIL FROM, RCPT TO..., DATA`` in one write; their replies matched in order (FIFO);
2. after ``354``: the content, dot-stuffed, and ``.`` in one write; the final reply.

RFC 2920 §3.1: every reply of a group is checked. A refused sender or all recipients refused
with ``DATA`` answered ``354`` anyway is closed with a lone ``.`` (no content is sent); the
refusal is then raised. Failures are raised as aiosmtplib's exception types, so
:func:`sender.transports.smtp.map_smtp_error` stays the one mapping of SMTP failures.

One deadline per connection instead of a timer per command: a reply must arrive within
``timeout`` seconds of the previous one (or of the request when nothing was pending); one
timer per connection checks that, re-armed only when it fires. A late connection is aborted
and every pending request fails with ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings

if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_LINE = 8192
"""Longest reply line taken (RFC 5321 allows 512; servers send longer texts)."""

_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
"""No control character (CR/LF above all) in a command argument: no command injection."""


Reply = aiosmtplib.SMTPResponse
"""(code, message) of one reply: the same type the lockstep path gets from aiosmtplib."""


class TransactionResult(NamedTuple):
    reply: Reply
    """The server's reply to the message content (250: accepted)."""
    refused: dict[str, Reply]
    """Recipients refused while others were accepted."""


class DataStarted(Exception):
    """The content may have reached the server and its reply is missing: ``cause`` says why."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def check_argument(argument: bytes) -> bytes:
    """``argument`` unchanged; ValueError if it holds a control character (as aiosmtplib)."""
    if _CONTROL.search(argument):
        raise ValueError("SMTP command argument contains a prohibited control character")
    return argument


def wire_content(data: bytes) -> bytes:
    """The message as sent after ``354``: CRLF line ends, dot-stuffed, ended by ``.``.

    The composer already writes CRLF; the fast path is two ``count``s and one ``replace``
    (instead of two regular-expression passes); anything else goes through aiosmtplib's own
    line-end normalisation.
    """
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = normalize_message_line_endings(data)
    if b"\n." in data:
        data = data.replace(b"\n.", b"\n..")
    if data.startswith(b"."):
        data = b"." + data
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


class _Pending(NamedTuple):
    expected: int
    replies: list[Reply]
    done: asyncio.Future[list[Reply]]


class PipelinedConnection(asyncio.Protocol):
    """An SMTP session that sends command groups and matches replies in order."""

    def __init__(self, *, timeout: float, extensions: Sequence[str] = ()) -> None:
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self.extensions = frozenset(e.lower() for e in extensions)
        self._tail = b""
        self._partial: list[bytes] = []
        self._pending: deque[_Pending] = deque()
        self._last_progress = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._lost: BaseException | None = None
        self.unsolicited: Reply | None = None
        """A reply nobody asked for (typically ``421`` before the server hangs up)."""

    @classmethod
    def take_over(cls, client: aiosmtplib.SMTP, *, timeout: float) -> PipelinedConnection:
        """Move ``client``'s set-up session (greeted, TLS, authenticated) to a new connection."""
        transport = client.transport
        if not isinstance(transport, asyncio.Transport) or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("the session closed before it was taken")
        connection = cls(timeout=timeout, extensions=list(client.esmtp_extensions))
        transport.set_protocol(connection)
        connection.connection_made(transport)
        client.transport = None  # aiosmtplib must never write on it (or close it) again
        return connection

    # --- state ---

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    @property
    def is_connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    # --- requests ---

    async def request(self, lines: bytes, count: int) -> list[Reply]:
        """Write ``lines`` (one or more commands, or content) and await ``count`` replies."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected(f"connection lost: {self._lost!r}")
        done: asyncio.Future[list[Reply]] = self._loop.create_future()
        if not self._pending:
            self._last_progress = self._loop.time()
        self._pending.append(_Pending(count, [], done))
        if self._timer is None:
            self._timer = self._loop.call_at(self._last_progress + self._timeout, self._check)
        transport.write(lines)
        return await done

    async def transaction(
        self, *, reset: bool, mail: bytes, recipients: Sequence[tuple[str, bytes]], content: bytes
    ) -> TransactionResult:
        """``[RSET] MAIL RCPT... DATA`` as one group, then the content (see the module doc).

        ``mail`` and each recipient's command are complete command lines without CRLF.
        Raises aiosmtplib's response exceptions for refusals, :class:`DataStarted` when the
        connection failed after the content started, OSError / TimeoutError before that.
        """
        group = [b"RSET"] if reset else []
        group.append(mail)
        group.extend(command for _address, command in recipients)
        group.append(b"DATA")
        replies = await self.request(b"\r\n".join(group) + b"\r\n", len(group))
        if reset and replies[0].code != 250:  # noqa: PLR2004 - SMTP "completed"
            # The session is in a state nobody knows (the MAIL/RCPT/DATA behind the refused
            # RSET may have been taken; ending a DATA with "." could send an empty message):
            # close it, the pool opens a fresh one.
            self.close()
            raise aiosmtplib.SMTPResponseException(replies[0].code, replies[0].message)
        mail_reply, data_reply = replies[int(reset)], replies[-1]
        rcpt_replies = replies[int(reset) + 1 : -1]
        refused = {
            address: reply
            for (address, _command), reply in zip(recipients, rcpt_replies, strict=True)
            if reply.code not in {250, 251}  # completed, will forward
        }
        failure: aiosmtplib.SMTPException | None = None
        if mail_reply.code != 250:  # noqa: PLR2004
            failure = aiosmtplib.SMTPSenderRefused(mail_reply.code, mail_reply.message, "")
        elif len(refused) == len(recipients):
            failure = aiosmtplib.SMTPRecipientsRefused(
                [
                    aiosmtplib.SMTPRecipientRefused(r.code, r.message, address)
                    for address, r in refused.items()
                ]
            )
        if data_reply.code != 354:  # noqa: PLR2004 - "start mail input"
            raise failure or aiosmtplib.SMTPDataError(data_reply.code, data_reply.message)
        if failure is not None:
            await self.request(b".\r\n", 1)  # DATA accepted anyway: end it with nothing in it
            raise failure
        try:
            (reply,) = await self.request(wire_content(content), 1)
        except (OSError, TimeoutError, aiosmtplib.SMTPServerDisconnected) as exc:
            raise DataStarted(exc) from exc
        if reply.code != 250:  # noqa: PLR2004
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        return TransactionResult(reply, refused)

    async def quit(self) -> None:
        """QUIT, then close (the caller bounds the wait)."""
        try:
            if self.is_connected:
                await self.request(b"QUIT\r\n", 1)
        finally:
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._tail:
            data = self._tail + data
        lines = data.split(b"\n")
        self._tail = lines.pop()  # after the last LF: part of a line still to come
        if len(self._tail) > MAX_LINE:
            self._fail(aiosmtplib.SMTPResponseException(-1, "reply line too long"))
            return
        partial = self._partial
        for raw in lines:
            line = raw[:-1] if raw[-1:] == b"\r" else raw
            code = line[:3]
            if len(code) < 3 or not code.isdigit():  # noqa: PLR2004 - "250"
                self._fail(aiosmtplib.SMTPResponseException(-1, f"malformed reply {line[:80]!r}"))
                return
            if line[3:4] == b"-":  # more lines of this reply follow
                partial.append(line[4:].strip())
                continue
            text = line[4:].strip()
            if partial:
                partial.append(text)
                text = b"\n".join(partial)
                partial.clear()
            self._reply(Reply(int(code), text.decode("utf-8", "surrogateescape")))

    def _reply(self, reply: Reply) -> None:
        self._last_progress = self._loop.time()
        if not self._pending:
            self.unsolicited = reply
            if self._transport is not None:
                self._transport.close()
            return
        pending = self._pending[0]
        pending.replies.append(reply)
        if len(pending.replies) == pending.expected:
            self._pending.popleft()
            if not pending.done.done():
                pending.done.set_result(pending.replies)

    def _check(self) -> None:
        self._timer = None
        if not self._pending:
            return
        late = self._last_progress + self._timeout
        if self._loop.time() >= late:
            self._fail(TimeoutError(f"no SMTP reply within {self._timeout}s"))
            if self._transport is not None:
                self._transport.abort()
            return
        self._timer = self._loop.call_at(late, self._check)

    def _fail(self, error: BaseException) -> None:
        self._lost = self._lost or error
        while self._pending:
            pending = self._pending.popleft()
            if not pending.done.done():
                pending.done.set_exception(error)
                pending.done.exception()  # retrieved: nobody may be awaiting it any more
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            exc
            if isinstance(exc, OSError)
            else aiosmtplib.SMTPServerDisconnected(f"connection lost ({exc!r})")
        )
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
