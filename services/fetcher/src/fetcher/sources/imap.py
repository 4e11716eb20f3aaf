"""IMAP source (aioimaplib): sync by UID and UIDVALIDITY, IDLE when offered, polling otherwise.

The cursor of a folder is ``(uidvalidity, last_uid)``: every message with a greater UID is new,
whatever its flags or date, so mail read by another client is still taken and an outage of any
length leaves no gap. Messages are downloaded with ``BODY.PEEK[]`` (which sets no flag); the
after-fetch action (seen / move / delete) runs only when the worker calls :meth:`settle`, i.e.
after Kafka acknowledged the message.

A UIDVALIDITY change means the server renumbered the folder (restore, migration, folder
re-created): the old UIDs say nothing about the new ones. We log it and continue after the
folder's current UIDNEXT - 1, i.e. the mail present at that moment is *not* re-published. The
trade-off: re-publishing all of it would flood email.raw with duplicates until per-channel
Message-ID dedupe exists; skipping may miss mail that arrived between our last sync and the
renumbering. An operator who prefers the other side deletes the channel's cursor (tombstone
on email.fetch-cursors) to re-take the whole folder.

Errors: :func:`map_imap_error` is the one place where aioimaplib, socket and ssl exceptions
(and NO/BAD answers) become pipeline errors — bad credentials or a missing folder are
:class:`~email_channels.errors.ChannelMisconfigured` (step ``auth`` / ``folder``), timeouts and
resets are :class:`~fetcher.sources.SourceUnavailable` (a TransientError).

aioimaplib quirks handled here:

- no STARTTLS support: we send the command and upgrade the transport with ``loop.start_tls``;
- ``IMAP4_SSL`` drops ``conn_lost_cb``: we use ``IMAP4`` with an ``ssl_context`` instead, and
  race every command against the connection being lost (pending commands are never failed);
- ``uid("store"|"move"|"copy"|"expunge")`` has no timeout: every call is bounded here;
- untagged ``EXISTS`` that arrive during another command are dropped: our protocol subclass
  remembers them, so mail that lands between the last search and IDLE is not left waiting;
- ``N:*`` searches always return the highest UID even when it is below N: filtered.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import structlog
from aioimaplib import (
    IMAP4,
    STOP_WAIT_SERVER_PUSH,
    AioImapException,
    Command,
    CommandTimeout,
    IMAP4ClientProtocol,
    Response,
    quoted,
)
from pydantic import SecretStr

from email_channels.errors import ChannelMisconfigured, PipelineError
from email_channels.events import (
    AfterFetch,
    ChannelConfig,
    FetchCursor,
    FolderCursor,
    ImapInbound,
    SourceIdentity,
    TlsMode,
    utcnow,
)
from email_channels.tls import client_contexts
from fetcher.metrics import UIDVALIDITY_RESETS
from fetcher.sources import Pending, SourceUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence
    from pathlib import Path

    from email_channels.hostpolicy import HostPolicy
    from email_channels.secretbox import SecretBox

log = structlog.get_logger(__name__)

T = TypeVar("T")
Step = Literal["dns", "tcp", "tls", "auth", "folder", "fetch", "settle"]

_CONNECTED_STATES: Final = frozenset({"NONAUTH", "AUTH", "SELECTED"})
_SERVER_TEXT_MAX: Final = 300


@dataclass(frozen=True)
class ImapOptions:
    """Timings and trust shared by every IMAP channel of this fetcher."""

    command_timeout: float = 30.0
    fetch_timeout: float = 300.0
    use_idle: bool = True
    idle_renew: float = 25 * 60.0
    poll_interval: float = 60.0
    ca_file: Path | None = None


# --- errors -------------------------------------------------------------------------------------


class ImapRefused(Exception):
    """The server answered a command with NO or BAD (before mapping)."""

    def __init__(self, command: str, result: str, text: str) -> None:
        super().__init__(f"{command} answered {result}: {text}")
        self.command = command
        self.result = result
        self.text = text

    @property
    def code(self) -> str | None:
        """The response code, e.g. ``AUTHENTICATIONFAILED`` from ``[AUTHENTICATIONFAILED] ...``."""
        match = re.match(r"\[([A-Z-]+)", self.text)
        return match.group(1) if match else None


# RFC 5530 response codes, by who can fix them.
_TRANSIENT_CODES: Final = frozenset(
    {"UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG", "EXPUNGEISSUED", "CORRUPTION"}
)
_AUTH_CODES: Final = frozenset(
    {"AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "EXPIRED", "CONTACTADMIN"}
)
_FOLDER_CODES: Final = frozenset({"NONEXISTENT", "TRYCREATE", "NOPERM", "CANNOT", "OVERQUOTA"})
_TLS_CODES: Final = frozenset({"PRIVACYREQUIRED"})


def map_imap_error(exc: BaseException, *, step: Step) -> PipelineError | None:  # noqa: PLR0911
    """Translate what aioimaplib, sockets and ssl raise into the pipeline's taxonomy.

    The one place these libraries' exceptions are interpreted. Returns None for anything
    else (a bug of ours stays a bug and keeps its traceback).
    """
    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, ImapRefused):
        return _map_refusal(exc, step)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ChannelMisconfigured(
            f"the server's TLS certificate is not trusted ({_ssl_reason(exc)}); add its CA to "
            "EMAIL_CHANNELS_CA_FILE, or turn verify_tls off for this channel if you must",
            step="tls",
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return SourceUnavailable(f"the TLS connection was cut: {_ssl_reason(exc)}", step="tls")
    if isinstance(exc, ssl.SSLError):
        return ChannelMisconfigured(
            f"TLS handshake failed ({_ssl_reason(exc)}): is the port right for this TLS mode?",
            step="tls",
        )
    if isinstance(exc, TimeoutError | CommandTimeout):
        return SourceUnavailable(f"the IMAP server did not answer in time ({step})", step=step)
    if isinstance(exc, ConnectionRefusedError):
        return SourceUnavailable(f"connection refused: {exc.strerror or exc}", step="tcp")
    if isinstance(exc, OSError):  # resets, aborts, unreachable networks, broken pipes
        return SourceUnavailable(
            f"connection failed: {type(exc).__name__}: {exc.strerror or exc}", step=step
        )
    if isinstance(exc, AioImapException):  # protocol state errors: start over on a new connection
        return SourceUnavailable(f"IMAP protocol error: {exc}", step=step)
    return None


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(
        getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc.strerror or exc
    )


def _map_refusal(exc: ImapRefused, step: Step) -> PipelineError:
    code = exc.code
    text = exc.text[:_SERVER_TEXT_MAX]
    message = f"the IMAP server refused {exc.command}: {exc.result} {text}".strip()
    if code in _TRANSIENT_CODES:
        return SourceUnavailable(message, step=step)
    if code in _TLS_CODES:
        return ChannelMisconfigured(message, step="tls")
    if code in _AUTH_CODES:
        return ChannelMisconfigured(message, step="auth")
    if code in _FOLDER_CODES:
        return ChannelMisconfigured(message, step="folder")
    if step in {"auth", "folder"}:  # LOGIN or SELECT refused: a human must look at it
        return ChannelMisconfigured(message, step=step)
    return SourceUnavailable(message, step=step)


@contextmanager
def _mapped(step: Step) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        error = map_imap_error(exc, step=step)
        if error is None or error is exc:
            raise
        raise error from exc


# --- pure protocol helpers -----------------------------------------------------------------------


@dataclass(frozen=True)
class FolderState:
    """What SELECT told us about a folder."""

    uidvalidity: int | None
    uidnext: int | None
    exists: int | None


_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_EXISTS = re.compile(rb"^(?:\* )?(\d+) EXISTS\b")
_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_BODY_LITERAL = re.compile(rb"BODY\[\] \{\d+\}$")
_UID_ITEM = re.compile(rb"\bUID (\d+)")


def parse_select(lines: Sequence[bytes | bytearray]) -> FolderState:
    """UIDVALIDITY, UIDNEXT and EXISTS from a SELECT response."""
    uidvalidity = uidnext = exists = None
    for line in lines:
        if isinstance(line, bytearray):
            continue
        if match := _UIDVALIDITY.search(line):
            uidvalidity = int(match.group(1))
        elif match := _UIDNEXT.search(line):
            uidnext = int(match.group(1))
        elif match := _EXISTS.match(line):
            exists = int(match.group(1))
    return FolderState(uidvalidity, uidnext, exists)


def parse_search(lines: Sequence[bytes | bytearray]) -> list[int]:
    """The numbers of a SEARCH response (aioimaplib strips ``* SEARCH``; the last line is the
    tagged completion text)."""
    numbers: set[int] = set()
    for line in lines[:-1]:
        numbers.update(int(token) for token in bytes(line).split() if token.isdigit())
    return sorted(numbers)


def parse_fetched_body(lines: Sequence[bytes | bytearray], uid: int) -> bytes | None:
    """The ``BODY[]`` literal of message ``uid`` in a UID FETCH response, None if absent.

    aioimaplib hands a literal over as a ``bytearray`` after the line announcing it; other
    items of the same FETCH may follow on the next line (`` UID 7)``). Unsolicited FETCH
    responses (flag changes of other messages) may be mixed in and are skipped.
    """
    blocks: list[tuple[list[bytes], list[bytes]]] = []  # (text lines, body literal)
    expect_literal = False
    for item in lines:
        if isinstance(item, bytearray):
            if expect_literal and blocks and not blocks[-1][1]:
                blocks[-1][1].append(bytes(item))
            expect_literal = False
            continue
        if _FETCH_START.match(item):
            blocks.append(([], []))
        elif not blocks:
            continue
        blocks[-1][0].append(item)
        expect_literal = bool(_BODY_LITERAL.search(item))
    with_body = [(texts, body[0]) for texts, body in blocks if body]
    for texts, body in with_body:
        match = _UID_ITEM.search(b" ".join(texts))
        if match and int(match.group(1)) == uid:
            return body
    if len(with_body) == 1 and not _UID_ITEM.search(b" ".join(with_body[0][0])):
        return with_body[0][1]  # a server that leaves out the UID item: the only body there is
    return None


@dataclass(frozen=True)
class FolderPlan:
    """Where to continue in a folder, and whether its UIDVALIDITY changed."""

    cursor: FolderCursor
    previous_uidvalidity: int | None = None

    @property
    def reset(self) -> bool:
        return self.previous_uidvalidity is not None


def plan_folder(current: FolderCursor | None, *, uidvalidity: int, uidnext: int) -> FolderPlan:
    """Decide where a folder's sync starts (pure).

    - never synced: from the beginning, every message in the folder is taken;
    - same UIDVALIDITY: after the last UID taken;
    - UIDVALIDITY changed: after UIDNEXT - 1, the present mail is skipped (module docstring).
    """
    if current is None:
        return FolderPlan(FolderCursor(uidvalidity=uidvalidity, last_uid=0))
    if current.uidvalidity == uidvalidity:
        return FolderPlan(current)
    return FolderPlan(
        FolderCursor(uidvalidity=uidvalidity, last_uid=max(uidnext - 1, 0)),
        previous_uidvalidity=current.uidvalidity,
    )


def encode_mailbox(name: str) -> str:
    """A folder name as an IMAP argument: modified UTF-7 (RFC 3501 §5.1.3), then quoted."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be")).decode("ascii")
            out.append("&" + encoded.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:  # noqa: PLR2004 - printable US-ASCII
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return str(quoted("".join(out)))


# --- aioimaplib, with the EXISTS it would drop -------------------------------------------------


class _Protocol(IMAP4ClientProtocol):  # type: ignore[misc]  # aioimaplib ships no types
    """Remembers untagged EXISTS, which aioimaplib drops when they come with another command."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn_lost_cb: Callable[[Exception | None], None] | None,
    ) -> None:
        super().__init__(loop, conn_lost_cb)
        self.exists_seen = False

    def _untagged_response(self, line: bytes) -> Any:
        if _EXISTS.match(line):
            self.exists_seen = True
        return super()._untagged_response(line)


class _Client(IMAP4):  # type: ignore[misc]  # aioimaplib ships no types
    protocol: _Protocol

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        running = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(running, conn_lost_cb)
        self._client_task = running.create_task(
            running.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


# --- the source ----------------------------------------------------------------------------------


class ImapSource:
    """One IMAP connection for one channel (a :class:`~fetcher.sources.MailSource`)."""

    def __init__(
        self,
        inbound: ImapInbound,
        *,
        password: str,
        host_policy: HostPolicy,
        options: ImapOptions,
        tls_context: ssl.SSLContext,
    ) -> None:
        self._inbound = inbound
        self._tls_context = tls_context
        self._password = SecretStr(password)
        self._policy = host_policy
        self._options = options
        self._folders = list(dict.fromkeys(inbound.folders)) or ["INBOX"]
        self._client: _Client | None = None
        self._lost = asyncio.Event()
        self._selected: tuple[str, int] | None = None
        self._uidnext_seen: dict[str, int] = {}
        self._idle = False

    def __repr__(self) -> str:
        inbound = self._inbound
        return f"ImapSource({inbound.username}@{inbound.host}:{inbound.port}, tls={inbound.tls})"

    # --- connection ---

    async def open(self) -> None:
        inbound = self._inbound
        self._check_settings()
        await self._policy.check(inbound.host, inbound.port)
        context = None if inbound.tls is TlsMode.PLAIN else self._tls_context
        self._lost = asyncio.Event()
        self._selected = None
        with _mapped("tcp"):
            client = _Client(
                inbound.host,
                inbound.port,
                timeout=self._options.command_timeout,
                conn_lost_cb=self._connection_lost,
                ssl_context=context if inbound.tls is TlsMode.SSL else None,
            )
            self._client = client
            await self._until_lost(client.wait_hello_from_server())
        if inbound.tls is TlsMode.STARTTLS:
            assert context is not None
            await self._starttls(client, context)
        if client.has_capability("LOGINDISABLED"):
            raise ChannelMisconfigured(
                "the server refuses LOGIN on this connection; use tls 'ssl' or 'starttls'",
                step="tls",
            )
        await self._command(
            client.login(quoted(inbound.username), self._password.get_secret_value()),
            "LOGIN",
            "auth",
        )
        with _mapped("auth"):  # capabilities may grow after login (MOVE, UIDPLUS...)
            await self._until_lost(
                asyncio.wait_for(client.protocol.capability(), self._options.command_timeout)
            )
        self._idle = self._options.use_idle and client.has_capability("IDLE")
        log.info(
            "imap logged in",
            host=inbound.host,
            port=inbound.port,
            tls=inbound.tls.value,
            idle=self._idle,
            folders=self._folders,
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        self._selected = None
        if client is None:
            return
        protocol = client.protocol
        try:
            if not self._lost.is_set() and protocol.state in _CONNECTED_STATES:
                with suppress(Exception):
                    await self._until_lost(asyncio.wait_for(client.logout(), 5.0))
        finally:
            if protocol.transport is not None:
                protocol.transport.close()
            for task in (*client.tasks, *protocol.tasks):
                task.cancel()

    # --- MailSource ---

    async def pending(self, cursor: FetchCursor) -> Pending:
        messages: list[SourceIdentity] = []
        for folder in self._folders:
            state = await self._select(folder)
            self._client_or_fail().protocol.exists_seen = False  # anything after this is news
            uidvalidity = state.uidvalidity
            assert uidvalidity is not None  # _select guarantees it
            uidnext = state.uidnext if state.uidnext is not None else await self._highest_uid() + 1
            self._uidnext_seen[folder] = uidnext
            plan = plan_folder(cursor.folders.get(folder), uidvalidity=uidvalidity, uidnext=uidnext)
            if plan.reset:
                UIDVALIDITY_RESETS.inc()
                log.warning(
                    "imap uidvalidity changed: folder renumbered, its present mail is skipped",
                    folder=folder,
                    old_uidvalidity=plan.previous_uidvalidity,
                    new_uidvalidity=uidvalidity,
                    resume_after_uid=plan.cursor.last_uid,
                    messages_skipped=state.exists,
                )
            if plan.cursor != cursor.folders.get(folder):
                cursor = cursor.model_copy(
                    update={
                        "folders": {**cursor.folders, folder: plan.cursor},
                        "updated_at": utcnow(),
                    }
                )
            after = plan.cursor.last_uid
            if uidnext - 1 <= after:
                continue  # nothing new: no search needed
            messages.extend(
                SourceIdentity(protocol="imap", folder=folder, uidvalidity=uidvalidity, uid=uid)
                for uid in await self._uids_after(after)
            )
        return Pending(cursor=cursor, messages=messages)

    async def fetch(self, message: SourceIdentity) -> bytes | None:
        client = await self._select_for(message)
        response = await self._command(
            client.uid("fetch", str(message.uid), "(UID BODY.PEEK[])"),
            "UID FETCH",
            "fetch",
            timeout=self._options.fetch_timeout,
        )
        body = parse_fetched_body(response.lines, _uid(message))
        if body is None and await self._still_there(_uid(message)):
            # Present but its body was not understood: never skip it (the cursor would pass
            # it for good); keep failing visibly until a fix to the parser takes it.
            raise SourceUnavailable(
                f"UID {message.uid} is in the folder but its FETCH response had no readable BODY[]",
                step="fetch",
            )
        return body

    async def _still_there(self, uid: int) -> bool:
        client = self._client_or_fail()
        response = await self._command(
            client.uid_search("UID", str(uid), charset=None), "UID SEARCH", "fetch"
        )
        return uid in parse_search(response.lines)

    async def settle(self, message: SourceIdentity) -> None:
        client = await self._select_for(message)
        uid = str(message.uid)
        match self._inbound.after_fetch:
            case AfterFetch.MARK_SEEN:
                await self._command(client.uid("store", uid, r"+FLAGS.SILENT (\Seen)"), "STORE")
            case AfterFetch.DELETE:
                await self._command(client.uid("store", uid, r"+FLAGS.SILENT (\Deleted)"), "STORE")
                await self._expunge(client, uid)
            case AfterFetch.MOVE:
                target = encode_mailbox(self._inbound.move_to_folder or "")
                if client.has_capability("MOVE"):
                    await self._command(client.uid("move", uid, target), "UID MOVE")
                else:
                    await self._command(client.uid("copy", uid, target), "UID COPY")
                    await self._command(
                        client.uid("store", uid, r"+FLAGS.SILENT (\Deleted)"), "STORE"
                    )
                    await self._expunge(client, uid)

    def advance(self, cursor: FetchCursor, message: SourceIdentity) -> FetchCursor:
        return advance_cursor(cursor, message)

    async def wait_for_news(self) -> None:
        client = self._client_or_fail()
        if client.protocol.exists_seen:
            return  # mail arrived while we were busy: no need to wait
        if not self._idle:
            await asyncio.sleep(self._options.poll_interval)
            return
        # IDLE watches one folder; with several, the others are looked at every poll interval.
        timeout = self._options.idle_renew
        if len(self._folders) > 1:
            timeout = min(timeout, self._options.poll_interval)
        first = self._folders[0]
        if self._selected is None or self._selected[0] != first:
            state = await self._select(first)
            if state.uidnext is None or state.uidnext > self._uidnext_seen.get(first, 0):
                return  # mail arrived in the first folder while we were in the others
        await self._idle_once(client, timeout)

    # --- internals ---

    def _check_settings(self) -> None:
        inbound = self._inbound
        if any(
            c in value
            for value in (inbound.username, self._password.get_secret_value())
            for c in "\r\n\0"
        ):
            raise ChannelMisconfigured(
                "the user name or password contains a line break or NUL", step="auth"
            )
        if inbound.after_fetch is AfterFetch.MOVE:
            if not inbound.move_to_folder:
                raise ChannelMisconfigured(
                    "after_fetch is 'move' but move_to_folder is empty", step="folder"
                )
            if inbound.move_to_folder in self._folders:
                raise ChannelMisconfigured(
                    f"move_to_folder {inbound.move_to_folder!r} is also a synced folder",
                    step="folder",
                )

    def _connection_lost(self, exc: Exception | None) -> None:
        log.debug("imap connection lost", error=str(exc) if exc else None)
        self._lost.set()

    def _client_or_fail(self) -> _Client:
        if self._client is None:
            raise SourceUnavailable("the IMAP connection is not open", step="tcp")
        return self._client

    async def _until_lost(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` unless the connection drops first (aioimaplib would hang)."""
        work = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, lost):
                task.cancel()
            await asyncio.gather(work, lost, return_exceptions=True)
        if work.cancelled():
            raise ConnectionResetError("the IMAP server closed the connection")
        return work.result()

    async def _command(
        self,
        awaitable: Awaitable[Response],
        name: str,
        step: Step = "settle",
        *,
        timeout: float | None = None,
    ) -> Response:
        """Run one command, bounded in time; NO/BAD and library errors come out mapped."""
        with _mapped(step):
            response: Response = await self._until_lost(
                asyncio.wait_for(awaitable, timeout or self._options.command_timeout)
            )
            if response.result != "OK":
                text = next(
                    (bytes(line).decode("utf-8", "replace") for line in reversed(response.lines)),
                    "",
                )
                raise ImapRefused(name, response.result, text)
            return response

    async def _starttls(self, client: _Client, context: ssl.SSLContext) -> None:
        if not client.has_capability("STARTTLS"):
            raise ChannelMisconfigured(
                "the server does not offer STARTTLS on this port", step="tls"
            )
        protocol = client.protocol
        await self._command(
            protocol.execute(Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)),
            "STARTTLS",
            "tls",
        )
        with _mapped("tls"):
            transport = await self._until_lost(
                asyncio.wait_for(
                    asyncio.get_running_loop().start_tls(
                        protocol.transport, protocol, context, server_hostname=self._inbound.host
                    ),
                    self._options.command_timeout,
                )
            )
            protocol.transport = transport
            # RFC 3501 §6.2.1: capabilities learnt before TLS must be forgotten.
            await self._until_lost(
                asyncio.wait_for(protocol.capability(), self._options.command_timeout)
            )

    async def _select(self, folder: str) -> FolderState:
        client = self._client_or_fail()
        self._selected = None
        news_before = client.protocol.exists_seen
        response = await self._command(client.select(encode_mailbox(folder)), "SELECT", "folder")
        client.protocol.exists_seen = news_before  # the SELECT's own EXISTS is no news
        state = parse_select(response.lines)
        if state.uidvalidity is None:
            raise ChannelMisconfigured(
                f"the server sent no UIDVALIDITY for folder {folder!r}", step="folder"
            )
        self._selected = (folder, state.uidvalidity)
        return state

    async def _select_for(self, message: SourceIdentity) -> _Client:
        folder = message.folder or "INBOX"
        if self._selected != (folder, message.uidvalidity):
            state = await self._select(folder)
            if state.uidvalidity != message.uidvalidity:
                raise SourceUnavailable(
                    f"UIDVALIDITY of {folder!r} changed during the sync", step="folder"
                )
        return self._client_or_fail()

    async def _uids_after(self, after: int) -> list[int]:
        client = self._client_or_fail()
        response = await self._command(
            client.uid_search("UID", f"{after + 1}:*", charset=None), "UID SEARCH", "fetch"
        )
        # "N:*" always matches the highest UID, even when it is below N: keep only new ones.
        return [uid for uid in parse_search(response.lines) if uid > after]

    async def _highest_uid(self) -> int:
        client = self._client_or_fail()
        response = await self._command(
            client.uid_search("UID", "*", charset=None), "UID SEARCH", "fetch"
        )
        return max(parse_search(response.lines), default=0)

    async def _expunge(self, client: _Client, uid: str) -> None:
        if client.has_capability("UIDPLUS"):
            await self._command(client.uid("expunge", uid), "UID EXPUNGE")
        else:  # also expunges other messages flagged \Deleted, as any client's EXPUNGE would
            await self._command(client.expunge(), "EXPUNGE")

    async def _idle_once(self, client: _Client, timeout: float) -> None:
        protocol = client.protocol
        loop = asyncio.get_running_loop()
        with _mapped("fetch"):
            idle: asyncio.Future[Response] = await self._until_lost(
                asyncio.wait_for(client.idle_start(timeout=timeout), self._options.command_timeout)
            )
            try:
                deadline = loop.time() + timeout
                while not protocol.exists_seen:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        pushed = await self._until_lost(client.wait_server_push(timeout=remaining))
                    except TimeoutError:
                        break
                    if pushed == STOP_WAIT_SERVER_PUSH:
                        break
                    # EXPUNGE, FETCH (flags) and "OK Still here" are not news: keep waiting.
            finally:
                await self._end_idle(client, idle)

    async def _end_idle(self, client: _Client, idle: asyncio.Future[Response]) -> None:
        protocol = client.protocol
        try:
            if not idle.done() and not self._lost.is_set():
                client.idle_done()
                response = await self._until_lost(
                    asyncio.wait_for(asyncio.shield(idle), self._options.command_timeout)
                )
                if response.result != "OK":
                    raise ImapRefused("IDLE", response.result, "")
        finally:
            if not idle.done():
                idle.cancel()
            while not protocol.idle_queue.empty():
                protocol.idle_queue.get_nowait()


def advance_cursor(cursor: FetchCursor, message: SourceIdentity) -> FetchCursor:
    """``cursor`` with ``message``'s folder moved to its UID (pure; never moves backwards)."""
    folder = message.folder or "INBOX"
    uidvalidity = message.uidvalidity
    if uidvalidity is None:
        raise ValueError("an IMAP message identity needs its UIDVALIDITY")
    uid = _uid(message)
    current = cursor.folders.get(folder)
    if current is not None and current.uidvalidity == uidvalidity:
        uid = max(uid, current.last_uid)
    folders = {**cursor.folders, folder: FolderCursor(uidvalidity=uidvalidity, last_uid=uid)}
    return cursor.model_copy(update={"folders": folders, "updated_at": utcnow()})


def _uid(message: SourceIdentity) -> int:
    if message.uid is None:
        raise ValueError("an IMAP message identity needs its UID")
    return message.uid


class ImapSourceFactory:
    """Builds an :class:`ImapSource` from a channel (a :data:`~fetcher.sources.SourceFactory`)."""

    def __init__(
        self, *, secret_box: SecretBox, host_policy: HostPolicy, options: ImapOptions
    ) -> None:
        self._secret_box = secret_box
        self._host_policy = host_policy
        self._options = options
        self._tls = client_contexts(extra_ca_file=options.ca_file)

    def __call__(self, channel: ChannelConfig) -> ImapSource:
        inbound = channel.inbound
        if not isinstance(inbound, ImapInbound):
            raise ChannelMisconfigured("the channel has no IMAP inbound settings", step="config")
        return ImapSource(
            inbound,
            password=self._secret_box.decrypt(inbound.password),
            host_policy=self._host_policy,
            options=self._options,
            tls_context=self._tls[inbound.verify_tls],
        )
