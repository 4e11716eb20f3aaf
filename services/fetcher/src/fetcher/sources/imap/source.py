"""The IMAP source: sync by UID and UIDVALIDITY in batches, IDLE when offered, polling otherwise.

The cursor of a folder is ``(uidvalidity, last_uid)``: every message with a greater UID is new,
whatever its flags or date, so mail read by another client is still taken and an outage of any
length leaves no gap. A batch is looked at first (``UID FETCH set (UID RFC822.SIZE)``, plus the
recipient headers on a recipient-only channel), then the bodies it may take are downloaded with
``BODY.PEEK[]`` (which sets no flag) in as few commands as the byte budget of a batch allows.
The after-fetch action (seen / move / delete) is one command over the batch's UID set and runs
only when the worker calls :meth:`ImapSource.settle`, i.e. after Kafka acknowledged the batch.

A UIDVALIDITY change means the server renumbered the folder: see
:func:`~fetcher.sources.imap.parsing.plan_folder` (the folder is taken again and what was
already published is recognised, never skipped on a guess).

Connection quirks of aioimaplib are handled in :mod:`fetcher.sources.imap.client`; here:

- ``IMAP4_SSL`` drops ``conn_lost_cb``: every command is raced against the connection being lost
  (pending commands are never failed by aioimaplib);
- ``uid("store"|"move"|"copy"|"expunge")`` has no timeout: every call is bounded here;
- ``N:*`` searches always return the highest UID even when it is below N: filtered.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

import structlog
from aioimaplib import STOP_WAIT_SERVER_PUSH, Command, Response, quoted
from pydantic import SecretStr

from email_channels.blobstore import put_stream
from email_channels.errors import ChannelMisconfigured
from email_channels.events import (
    AfterFetch,
    ChannelConfig,
    FetchCursor,
    ImapInbound,
    SourceIdentity,
    TlsMode,
    utcnow,
)
from fetcher.metrics import UIDVALIDITY_RESETS
from fetcher.rawemail import message_id_of
from fetcher.recipients import RECIPIENT_HEADERS, addressed_to
from fetcher.sources import Fetched, Outcome, Pending, SourceUnavailable, StoredBody
from fetcher.sources.imap.client import ImapClient, uid_fetch
from fetcher.sources.imap.errors import ImapRefused, Step, mapped
from fetcher.sources.imap.parsing import (
    FetchedItems,
    FolderState,
    ListedFolder,
    advance_cursor,
    encode_mailbox,
    message_uid,
    needs_recheck,
    parse_fetch,
    parse_list,
    parse_search,
    parse_select,
    plan_folder,
    uid_set,
)
from fetcher.sources.mailserver import (
    LARGE_DOWNLOADS_DEFAULT,
    MailServerOptions,
    MailServerSourceFactory,
)
from fetcher.sources.tls import start_tls

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Sequence

    from email_channels.blobstore import BlobStore
    from email_channels.hostpolicy import HostPolicy

log = structlog.get_logger(__name__)

T = TypeVar("T")

_CONNECTED_STATES: Final = frozenset({"NONAUTH", "AUTH", "SELECTED"})
_SKIPPED_SPECIAL_USE: Final = frozenset({"\\sent", "\\drafts", "\\trash", "\\all", "\\flagged"})
"""Folders that do not receive mail (or only mirror other folders)."""
_SKIPPED_NAMES: Final = frozenset(
    {
        "sent",
        "sent items",
        "sent messages",
        "sent mail",
        "drafts",
        "trash",
        "deleted items",
        "deleted messages",
        "outbox",
        "all mail",
    }
)
_NOT_SELECTABLE: Final = frozenset({"\\noselect", "\\nonexistent"})


@dataclass(frozen=True)
class ImapOptions(MailServerOptions):
    """The shared mail-server options plus IMAP's own push timings."""

    use_idle: bool = True
    idle_renew: float = 25 * 60.0
    hot_window: float = 10.0
    """After mail arrived, look with NOOP every ``hot_poll`` for this long before IDLE (0: off)."""
    hot_poll: float = 0.05


def wanted_folders(listed: Sequence[ListedFolder], *, exclude: set[str]) -> list[str]:
    """The folders that receive mail, INBOX first (pure): skips Sent, Drafts and Trash by
    SPECIAL-USE and by common names, unselectable ones and ``exclude`` (a move target)."""
    names: list[str] = []
    for folder in listed:
        if folder.flags & (_SKIPPED_SPECIAL_USE | _NOT_SELECTABLE):
            continue
        leaf = folder.name.rsplit("/", 1)[-1].rsplit(".", 1)[-1].strip().lower()
        if folder.name.lower() in _SKIPPED_NAMES or leaf in _SKIPPED_NAMES:
            continue
        if folder.name in exclude:
            continue
        names.append("INBOX" if folder.name.upper() == "INBOX" else folder.name)
    return sorted(set(names), key=lambda name: (name != "INBOX", name))


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
        recipient: str | None = None,
        large_downloads: asyncio.Semaphore | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self._inbound = inbound
        self._blobs = blobs
        self._tls_context = tls_context
        self._password = SecretStr(password)
        self._policy = host_policy
        self._options = options
        self._recipient = recipient
        self._large = large_downloads or asyncio.Semaphore(LARGE_DOWNLOADS_DEFAULT)
        self._folders = list(dict.fromkeys(inbound.folders)) or ["INBOX"]
        self._client: ImapClient | None = None
        self._lost = asyncio.Event()
        self._selected: tuple[str, int] | None = None
        self._uidnext_seen: dict[str, int] = {}
        self._idle = False
        self._last_mail = float("-inf")  # loop time of the last sync that found mail

    def __repr__(self) -> str:
        inbound = self._inbound
        return f"ImapSource({inbound.username}@{inbound.host}:{inbound.port}, tls={inbound.tls})"

    @property
    def folders(self) -> list[str]:
        """The folders synced (after :meth:`open`, with sync_all_folders: as listed)."""
        return list(self._folders)

    # --- connection ---

    async def open(self) -> None:
        inbound = self._inbound
        self._check_settings()
        await self._policy.check(inbound.host, inbound.port)
        context = None if inbound.tls is TlsMode.PLAIN else self._tls_context
        self._lost = asyncio.Event()
        self._selected = None
        with mapped("tcp"):
            client = ImapClient(
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
        with mapped("auth"):  # capabilities may grow after login (MOVE, UIDPLUS...)
            await self._until_lost(
                asyncio.wait_for(client.protocol.capability(), self._options.command_timeout)
            )
        self._idle = self._options.use_idle and client.has_capability("IDLE")
        await self._check_move_target()
        if inbound.sync_all_folders:
            await self._list_folders()
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
                try:
                    await self._until_lost(asyncio.wait_for(client.logout(), 5.0))
                except Exception as exc:
                    log.debug("imap logout failed", error=str(exc))
        finally:
            if protocol.transport is not None:
                protocol.transport.close()
            for task in (*client.tasks, *protocol.tasks):
                task.cancel()

    # --- MailSource ---

    async def pending(self, cursor: FetchCursor) -> Pending:
        if self._inbound.sync_all_folders:
            await self._list_folders()  # folders created since the last sync are taken too
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
                    "imap uidvalidity changed: the folder is taken again and checked against "
                    "what was already published",
                    folder=folder,
                    old_uidvalidity=plan.previous_uidvalidity,
                    new_uidvalidity=uidvalidity,
                    recheck_through_uid=plan.cursor.recheck_through,
                    messages=state.exists,
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
        if messages:
            self._last_mail = asyncio.get_running_loop().time()
        recheck = frozenset(m.key for m in messages if needs_recheck(cursor, m))
        return Pending(cursor=cursor, messages=messages, recheck=recheck)

    async def fetch(self, messages: Sequence[SourceIdentity]) -> list[Fetched]:
        results: dict[str, Fetched] = {}
        for group in _by_folder(messages):
            await self._select_for(group[0])
            results.update((f.message.key, f) for f in await self._fetch_folder(group))
        return [results[message.key] for message in messages]

    async def settle(self, messages: Sequence[SourceIdentity]) -> None:
        for group in _by_folder(messages):
            client = await self._select_for(group[0])
            await self._settle_uids(client, uid_set(message_uid(m) for m in group))

    def advance(self, cursor: FetchCursor, messages: Sequence[SourceIdentity]) -> FetchCursor:
        return advance_cursor(cursor, messages)

    async def wait_for_news(self) -> None:
        client = self._client_or_fail()
        if client.protocol.exists_seen:
            return  # mail arrived while we were busy: no need to wait
        if not self._idle:
            await asyncio.sleep(self._options.poll_interval)
            return
        if await self._hot_poll(client):
            return
        # IDLE watches one folder; with several, the others are looked at every poll interval.
        timeout = self._options.idle_renew
        if len(self._folders) > 1 or self._inbound.sync_all_folders:
            timeout = min(timeout, self._options.poll_interval)
        first = self._folders[0]
        if self._selected is None or self._selected[0] != first:
            state = await self._select(first)
            if state.uidnext is None or state.uidnext > self._uidnext_seen.get(first, 0):
                return  # mail arrived in the first folder while we were in the others
        await self._idle_once(client, timeout)

    async def _hot_poll(self, client: ImapClient) -> bool:
        """Shortly after mail arrived, ask with NOOP instead of waiting in IDLE.

        Dovecot tells an IDLE (or NOTIFY) client about a change a fixed half second after it
        (``NOTIFY_DELAY_MSECS`` 500 in src/lib-storage/mailbox-watch.c, to coalesce what
        follows; bench/bench_fetcher.py measures ~0.5 s from delivery to EXISTS), while any
        command such as NOOP makes it look at the mailbox at once. Other servers push sooner
        or later; polling works with all of them. Mail tends to come in bursts, so a channel
        that just got mail asks every ``hot_poll`` seconds for ``hot_window`` seconds, then
        goes back to IDLE: a quiet mailbox costs no polling, and the first message of a burst
        still waits for the server's push. True when news arrived.
        """
        options = self._options
        loop = asyncio.get_running_loop()
        if options.hot_window <= 0 or len(self._folders) != 1:
            return False
        while loop.time() - self._last_mail < options.hot_window:
            await asyncio.sleep(options.hot_poll)
            await self._command(client.noop(), "NOOP", "fetch")
            if client.protocol.exists_seen:
                return True
        return False

    # --- fetching a batch of one folder ---

    async def _fetch_folder(self, group: Sequence[SourceIdentity]) -> list[Fetched]:
        options = self._options
        uids = [message_uid(m) for m in group]
        items = "UID RFC822.SIZE"
        if self._recipient is not None:
            items += f" BODY.PEEK[HEADER.FIELDS ({' '.join(RECIPIENT_HEADERS).upper()})]"
        meta = await self._uid_fetch(uid_set(uids), items, "fetch")
        by_uid = {m.uid: m for m in meta if m.uid is not None}
        decided: dict[int, Fetched] = {}
        wanted: list[tuple[SourceIdentity, int]] = []
        for message in group:
            uid = message_uid(message)
            item = by_uid.get(uid)
            if item is None:
                decided[uid] = Fetched(message, Outcome.VANISHED)
            elif self._recipient is not None and not addressed_to(
                item.section("BODY[HEADER.FIELDS") or b"", self._recipient
            ):
                decided[uid] = Fetched(message, Outcome.NOT_FOR_CHANNEL, size=item.size)
            elif item.size is not None and item.size > options.max_message_bytes:
                headers = await self._headers_of(uid)
                decided[uid] = Fetched(message, Outcome.OVERSIZE, size=item.size, headers=headers)
            else:
                wanted.append((message, item.size or 0))
        for chunk in _chunks_by_size(wanted, options.batch_bytes, options.large_message_bytes):
            decided.update(await self._download(chunk))
        return [decided[message_uid(m)] for m in group]

    async def _download(self, chunk: Sequence[tuple[SourceIdentity, int]]) -> dict[int, Fetched]:
        uids = [message_uid(m) for m, _ in chunk]
        large = len(chunk) == 1 and chunk[0][1] > self._options.large_message_bytes
        if large and self._blobs is not None:
            return {uids[0]: await self._stream(chunk[0][0], chunk[0][1], self._blobs)}
        if large:
            async with self._large:  # a bound on big messages held in memory at once
                bodies = await self._uid_fetch(uid_set(uids), "UID BODY.PEEK[]", "fetch")
        else:
            bodies = await self._uid_fetch(uid_set(uids), "UID BODY.PEEK[]", "fetch")
        by_uid = {m.uid: m for m in bodies if m.uid is not None and "BODY[]" in m.sections}
        if len(chunk) == 1 and not by_uid:  # a server that leaves out the UID item
            lone = [m for m in bodies if "BODY[]" in m.sections]
            if len(lone) == 1:
                by_uid = {uids[0]: lone[0]}
        out: dict[int, Fetched] = {}
        missing = [uid for uid in uids if uid not in by_uid]
        still_there = set(await self._still_there(missing)) if missing else set()
        for message, _ in chunk:
            uid = message_uid(message)
            if uid in by_uid:
                raw = by_uid[uid].sections["BODY[]"]
                out[uid] = Fetched(message, Outcome.FETCHED, raw=raw, size=len(raw))
            elif uid in still_there:
                out[uid] = Fetched(message, Outcome.UNREADABLE)
            else:
                out[uid] = Fetched(message, Outcome.VANISHED)
        return out

    async def _stream(self, message: SourceIdentity, size: int, blobs: BlobStore) -> Fetched:
        """A large message in pieces (``BODY.PEEK[]<offset.length>``) straight into the blob
        store, hashed on the way: at most one piece of it is in memory at a time."""
        uid = message_uid(message)
        piece_size = max(self._options.large_chunk_bytes, 1)
        message_id: list[str | None] = []  # read from the first piece, which is not kept

        async def pieces() -> AsyncIterator[bytes]:
            offset = 0
            while True:
                items = await self._uid_fetch(
                    str(uid), f"UID BODY.PEEK[]<{offset}.{piece_size}>", "fetch"
                )
                piece = next((m.sections["BODY[]"] for m in items if "BODY[]" in m.sections), None)
                if piece is None and offset >= size > 0:
                    return  # past the end: some servers answer "" rather than a literal
                if piece is None:
                    raise _NoContent
                if not message_id:
                    message_id.append(message_id_of(piece))
                yield piece
                offset += len(piece)
                if len(piece) < piece_size:
                    return

        async with self._large:  # a bound on large downloads at once in this process
            try:
                ref = await put_stream(blobs, pieces())
            except _NoContent:
                there = await self._still_there([uid])
                return Fetched(message, Outcome.UNREADABLE if there else Outcome.VANISHED)
        stored = StoredBody(ref=ref, message_id=message_id[0] if message_id else None)
        log.info("large message streamed to the blob store", uid=uid, size=ref.size)
        return Fetched(message, Outcome.FETCHED, size=ref.size, stored=stored)

    async def _headers_of(self, uid: int) -> bytes | None:
        items = await self._uid_fetch(str(uid), "UID BODY.PEEK[HEADER]", "fetch")
        return next((m.section("BODY[HEADER]") for m in items if m.uid == uid), None)

    async def _uid_fetch(self, uids: str, items: str, step: Step) -> list[FetchedItems]:
        client = self._client_or_fail()
        timeout = self._options.fetch_timeout
        response = await self._command(
            uid_fetch(client.protocol, uids, f"({items})", timeout=timeout),
            "UID FETCH",
            step,
            timeout=timeout,
        )
        return parse_fetch(response.lines)

    async def _still_there(self, uids: Sequence[int]) -> list[int]:
        client = self._client_or_fail()
        response = await self._command(
            client.uid_search("UID", uid_set(uids), charset=None), "UID SEARCH", "fetch"
        )
        return [uid for uid in parse_search(response.lines) if uid in set(uids)]

    async def _settle_uids(self, client: ImapClient, uids: str) -> None:
        match self._inbound.after_fetch:
            case AfterFetch.MARK_SEEN:
                await self._command(client.uid("store", uids, r"+FLAGS.SILENT (\Seen)"), "STORE")
            case AfterFetch.DELETE:
                await self._command(client.uid("store", uids, r"+FLAGS.SILENT (\Deleted)"), "STORE")
                await self._expunge(client, uids)
            case AfterFetch.MOVE:
                target = encode_mailbox(self._inbound.move_to_folder or "")
                if client.has_capability("MOVE"):
                    await self._command(client.uid("move", uids, target), "UID MOVE")
                else:
                    await self._command(client.uid("copy", uids, target), "UID COPY")
                    await self._command(
                        client.uid("store", uids, r"+FLAGS.SILENT (\Deleted)"), "STORE"
                    )
                    await self._expunge(client, uids)

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

    async def _check_move_target(self) -> None:
        """A move target that does not exist would fail every settle: say so at connect."""
        target = self._inbound.move_to_folder
        if self._inbound.after_fetch is not AfterFetch.MOVE or not target:
            return
        client = self._client_or_fail()
        response = await self._command(client.list('""', encode_mailbox(target)), "LIST", "folder")
        listed = parse_list(response.lines)
        if not any(f.name == target and not f.flags & _NOT_SELECTABLE for f in listed):
            raise ChannelMisconfigured(
                f"move_to_folder {target!r} does not exist on the server", step="folder"
            )

    async def _list_folders(self) -> None:
        client = self._client_or_fail()
        response = await self._command(client.list('""', '"*"'), "LIST", "folder")
        exclude = {self._inbound.move_to_folder} if self._inbound.move_to_folder else set()
        found = wanted_folders(parse_list(response.lines), exclude=exclude)
        if found != self._folders:
            log.info("imap folders synced", folders=found)
        self._folders = found or ["INBOX"]

    def _connection_lost(self, exc: Exception | None) -> None:
        log.debug("imap connection lost", error=str(exc) if exc else None)
        self._lost.set()

    def _client_or_fail(self) -> ImapClient:
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
        with mapped(step):
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

    async def _starttls(self, client: ImapClient, context: ssl.SSLContext) -> None:
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
        with mapped("tls"):
            transport = await self._until_lost(
                asyncio.wait_for(
                    start_tls(
                        asyncio.get_running_loop(),
                        protocol.transport,
                        protocol,
                        context,
                        self._inbound.host,
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

    async def _select_for(self, message: SourceIdentity) -> ImapClient:
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

    async def _expunge(self, client: ImapClient, uids: str) -> None:
        if client.has_capability("UIDPLUS"):
            await self._command(client.uid("expunge", uids), "UID EXPUNGE")
        else:  # also expunges other messages flagged \Deleted, as any client's EXPUNGE would
            await self._command(client.expunge(), "EXPUNGE")

    async def _idle_once(self, client: ImapClient, timeout: float) -> None:
        protocol = client.protocol
        loop = asyncio.get_running_loop()
        with mapped("fetch"):
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

    async def _end_idle(self, client: ImapClient, idle: asyncio.Future[Response]) -> None:
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


class _NoContent(Exception):
    """The server answered a piece of a large message without its content."""


def _by_folder(messages: Sequence[SourceIdentity]) -> list[list[SourceIdentity]]:
    """Consecutive runs of one folder (and UIDVALIDITY), in order."""
    groups: list[list[SourceIdentity]] = []
    for message in messages:
        if groups and (groups[-1][0].folder, groups[-1][0].uidvalidity) == (
            message.folder,
            message.uidvalidity,
        ):
            groups[-1].append(message)
        else:
            groups.append([message])
    return groups


def _chunks_by_size(
    wanted: Sequence[tuple[SourceIdentity, int]], budget: int, large: int
) -> list[list[tuple[SourceIdentity, int]]]:
    """Downloads of at most ``budget`` bytes; a message above ``large`` alone."""
    chunks: list[list[tuple[SourceIdentity, int]]] = []
    current: list[tuple[SourceIdentity, int]] = []
    used = 0
    for message, size in wanted:
        if size > large:
            chunks.append([(message, size)])
            continue
        if current and used + size > budget:
            chunks.append(current)
            current, used = [], 0
        current.append((message, size))
        used += size
    if current:
        chunks.append(current)
    return chunks


class ImapSourceFactory(MailServerSourceFactory[ImapOptions]):
    """Builds an :class:`ImapSource` from a channel (a :data:`~fetcher.sources.SourceFactory`)."""

    def __call__(self, channel: ChannelConfig) -> ImapSource:
        inbound = channel.inbound
        if not isinstance(inbound, ImapInbound):
            raise ChannelMisconfigured("the channel has no IMAP inbound settings", step="config")
        return ImapSource(inbound, options=self.options, **self.access(channel, inbound))
