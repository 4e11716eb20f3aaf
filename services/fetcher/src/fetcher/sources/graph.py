"""Exchange Online through Microsoft Graph: delta query per folder, full MIME, settle after ack.

One round (:meth:`GraphSource.pending`) asks each synced folder for its changes since the
folder's delta link (``/mailFolders/{id}/messages/delta``, page after page through
``@odata.nextLink`` to the final ``@odata.deltaLink``). New and changed messages are offered
oldest first; removed ones (``@removed``) are nothing to take. The worker takes them in
batches (the batch :class:`~fetcher.sources.MailSource` protocol): for each batch it downloads
every message's full MIME (``/messages/{id}/$value``, one request per message), publishes them,
and only after Kafka's acks settles them: PATCH ``isRead``, ``move`` or DELETE (to Deleted
Items, as Outlook does), one request per message.

The cursor (``email.fetch-cursors``) holds each folder's delta link. A folder's new link is
stored only when its last offered message is advanced past, so a crash mid-round asks the same
changes again: at least once, never lost. Marking a message read is itself a change that the
next delta reports; the ids marked read in a round (short hashes, ``FetchCursor.settled``) are
skipped once in the next round, so a message is not published twice.

Delegated channels: when a refresh rotates the refresh token, the new encrypted token cache goes
into the cursor with the sign-in it descends from; a newer sign-in on the channel wins.

Throttling (429/503 with Retry-After) pauses this mailbox only, inside this channel's task.
``sync_recipient_only``: a message not addressed to the channel
(:mod:`fetcher.recipients`) is left untouched on the server. A message above
``max_message_bytes`` is dead-lettered with its header block; an empty ``$value`` is
unreadable (counted, then dead-lettered by the worker).

Not done: Graph change notifications (push); the worker polls every ``poll_interval``. The
size and recipient checks are made on the downloaded MIME (Graph's message resource has no
size and no raw header block without extended properties), not before the download.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog

from email_channels.errors import ChannelMisconfigured
from email_channels.events import AfterFetch, GraphAuth, GraphInbound, SourceIdentity, utcnow
from email_channels.graph_auth import GraphTokens, check_app_fields
from email_channels.graph_client import (
    GraphClient,
    GraphNotFound,
    GraphRequestRefused,
    MailboxThrottle,
)
from email_channels.tls import client_contexts
from fetcher.recipients import addressed_to
from fetcher.sources import Fetched, Outcome, Pending

if TYPE_CHECKING:
    import ssl
    from collections.abc import Sequence
    from pathlib import Path

    from email_channels.events import ChannelConfig, FetchCursor
    from email_channels.hostpolicy import HostPolicy
    from email_channels.secretbox import SecretBox

log = structlog.get_logger(__name__)

NOT_RECEIVING = ("drafts", "sentitems", "deleteditems", "outbox")
"""Well-known folders that are never synced, even with ``sync_all_folders``."""
_GONE = 410  # a delta link Graph no longer knows (syncStateNotFound): start the folder afresh


@dataclass(frozen=True)
class GraphOptions:
    poll_interval: float = 60.0
    timeout: float = 60.0
    page_size: int = 50
    max_throttle_wait: float = 120.0
    """Longest Retry-After this channel's task sleeps through; a longer one fails the round."""
    ca_file: Path | None = None
    max_message_bytes: int = 50 * 1024 * 1024
    """Above this a message is dead-lettered with its header block."""


def settled_key(graph_id: str) -> str:
    """A short, stable stand-in for a Graph id in the cursor (ids are ~150 characters)."""
    return hashlib.sha256(graph_id.encode()).hexdigest()[:16]


class GraphSource:
    """One channel's Exchange Online mailbox (a :class:`~fetcher.sources.MailSource`)."""

    def __init__(
        self,
        channel: ChannelConfig,
        inbound: GraphInbound,
        *,
        secrets: SecretBox | None,
        tls: ssl.SSLContext,
        throttle: MailboxThrottle,
        options: GraphOptions,
        host_policy: HostPolicy | None = None,
    ) -> None:
        self._channel = channel
        self._inbound = inbound
        self._secrets = secrets
        self._tls = tls
        self._throttle = throttle
        self._options = options
        self._host_policy = host_policy
        self._tokens: GraphTokens | None = None
        self._client: GraphClient | None = None
        self._folders: list[str] | None = None
        self._move_to: str | None = None
        self._finishes: dict[str, tuple[str, str]] = {}
        """graph id -> (folder id, delta link) stored once that message is advanced past."""
        self._marked: set[str] = set()

    def __repr__(self) -> str:
        return f"GraphSource({self._inbound.mailbox}, auth={self._inbound.auth.value})"

    async def open(self) -> None:
        inbound = self._inbound
        check_app_fields(inbound.tenant_id, inbound.client_id)
        if inbound.after_fetch is AfterFetch.MOVE and not inbound.move_to_folder:
            raise ChannelMisconfigured(
                "after_fetch is 'move' but move_to_folder is empty", step="folder"
            )
        if inbound.auth is GraphAuth.DELEGATED and inbound.token_cache is None:
            raise ChannelMisconfigured(
                "not authorised: no administrator has signed in for this channel yet - use "
                "Save and authorise",
                step="token",
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def pending(self, cursor: FetchCursor) -> Pending:
        client = self._connect(cursor)
        folders = await self._synced_folders(client)
        skip = set(cursor.settled)
        links = dict(cursor.delta_links)
        offered: list[SourceIdentity] = []
        self._finishes.clear()
        self._marked.clear()
        for folder in folders:
            ids, link = await self._changes(client, folder, cursor.delta_links.get(folder), skip)
            if ids:
                self._finishes[ids[-1]] = (folder, link)
                offered.extend(
                    SourceIdentity(protocol="graph", folder=folder, graph_id=i) for i in ids
                )
            else:
                links[folder] = link
        changed: dict[str, Any] = {}
        if links != cursor.delta_links:
            changed["delta_links"] = links
        if cursor.settled:
            changed["settled"] = []
        changed.update(self._rotated())
        if changed:
            cursor = cursor.model_copy(update={**changed, "updated_at": utcnow()})
        return Pending(cursor=cursor, messages=offered)

    async def fetch(self, messages: Sequence[SourceIdentity]) -> list[Fetched]:
        return [await self._fetch_one(message) for message in messages]

    async def _fetch_one(self, message: SourceIdentity) -> Fetched:
        client = self._client_or_connect()
        try:
            response = await client.request(
                "GET", f"{client.user_path}/messages/{_graph_id(message)}/$value"
            )
        except GraphNotFound:
            return Fetched(message, Outcome.VANISHED)  # deleted or moved since the delta round
        raw = response.content
        if not raw:
            return Fetched(message, Outcome.UNREADABLE)
        address = self._channel.email_address or self._inbound.mailbox
        if self._channel.sync_recipient_only and not addressed_to(_header_block(raw), address):
            log.info("not addressed to the channel: left untouched on the server")
            return Fetched(message, Outcome.NOT_FOR_CHANNEL, size=len(raw))
        if len(raw) > self._options.max_message_bytes:
            return Fetched(message, Outcome.OVERSIZE, size=len(raw), headers=_header_block(raw))
        return Fetched(message, Outcome.FETCHED, raw=raw, size=len(raw))

    async def settle(self, messages: Sequence[SourceIdentity]) -> None:
        for message in messages:
            await self._settle_one(message)

    async def _settle_one(self, message: SourceIdentity) -> None:
        client = self._client_or_connect()
        path = f"{client.user_path}/messages/{_graph_id(message)}"
        try:
            match self._inbound.after_fetch:
                case AfterFetch.MARK_SEEN:
                    await client.request("PATCH", path, json={"isRead": True})
                    self._marked.add(settled_key(_graph_id(message)))
                case AfterFetch.MOVE:
                    if self._move_to is None:  # a settle left pending by an earlier session
                        await self._synced_folders(client)
                    await client.request(
                        "POST", f"{path}/move", json={"destinationId": self._move_to}
                    )
                case AfterFetch.DELETE:
                    await client.request("DELETE", path)
        except GraphNotFound:
            log.info("message already gone from the server; nothing to settle")

    def advance(self, cursor: FetchCursor, messages: Sequence[SourceIdentity]) -> FetchCursor:
        changed: dict[str, Any] = {}
        links = dict(cursor.delta_links)
        settled = list(cursor.settled)
        for message in messages:
            finish = self._finishes.pop(_graph_id(message), None)
            if finish is not None:
                folder, link = finish
                links[folder] = link
            key = settled_key(_graph_id(message))
            if key in self._marked and key not in settled:
                settled.append(key)
        if links != cursor.delta_links:
            changed["delta_links"] = links
        if settled != cursor.settled:
            changed["settled"] = settled
        changed.update(self._rotated())
        if not changed:
            return cursor
        return cursor.model_copy(update={**changed, "updated_at": utcnow()})

    async def wait_for_news(self) -> None:
        await asyncio.sleep(self._options.poll_interval)

    # --- internals ---

    def _connect(self, cursor: FetchCursor | None) -> GraphClient:
        if self._client is not None:
            return self._client
        inbound = self._inbound
        rotated = None
        if (
            cursor is not None
            and cursor.token_cache is not None
            and inbound.authorised_at is not None
            and cursor.token_cache_authorised_at == inbound.authorised_at
        ):
            rotated = cursor.token_cache  # refreshed since this sign-in: the newer refresh token
        self._tokens = GraphTokens(
            inbound,
            secrets=self._secrets,
            ca_file=self._options.ca_file,
            timeout_s=self._options.timeout,
            token_cache=rotated,
        )
        self._client = GraphClient(
            inbound,
            self._tokens,
            tls=self._tls,
            throttle=self._throttle,
            timeout_s=self._options.timeout,
            max_wait_s=self._options.max_throttle_wait,
            host_policy=self._host_policy,
        )
        return self._client

    def _client_or_connect(self) -> GraphClient:
        """The client of this session; a settle left pending by an earlier session runs before
        ``pending`` gives the cursor, and then uses the channel's own token cache."""
        return self._client or self._connect(None)

    def _rotated(self) -> dict[str, Any]:
        cache = self._tokens.rotated_cache() if self._tokens is not None else None
        if cache is None:
            return {}
        log.info("graph refresh token rotated; keeping the new one in the cursor")
        return {"token_cache": cache, "token_cache_authorised_at": self._inbound.authorised_at}

    async def _changes(
        self, client: GraphClient, folder: str, link: str | None, skip: set[str]
    ) -> tuple[list[str], str]:
        """The ids changed in ``folder`` since ``link`` (oldest first) and the new delta link."""
        try:
            return await self._delta(client, folder, link, skip)
        except GraphRequestRefused as exc:
            if exc.status != _GONE or link is None:
                raise
            log.warning("graph forgot the delta link; syncing the folder afresh", folder=folder)
            return await self._delta(client, folder, None, skip)

    async def _delta(
        self, client: GraphClient, folder: str, link: str | None, skip: set[str]
    ) -> tuple[list[str], str]:
        url = link or f"{client.user_path}/mailFolders/{quote(folder)}/messages/delta"
        params = None if link else {"$select": "id,receivedDateTime,isRead"}
        headers = {"Prefer": f"odata.maxpagesize={self._options.page_size}"}
        found: dict[str, str] = {}
        while True:
            page = (await client.request("GET", url, params=params, headers=headers)).json()
            for item in page.get("value", []):
                graph_id = str(item.get("id", ""))
                if not graph_id or "@removed" in item:
                    found.pop(graph_id, None)
                    continue
                if settled_key(graph_id) in skip:
                    continue  # our own "mark read" coming back as a change
                found[graph_id] = str(item.get("receivedDateTime", ""))
            if "@odata.nextLink" in page:
                url, params = str(page["@odata.nextLink"]), None
                continue
            ordered = sorted(found, key=found.__getitem__)  # stable: equal times keep order
            return ordered, str(page["@odata.deltaLink"])

    async def _synced_folders(self, client: GraphClient) -> list[str]:
        if self._folders is not None:
            return self._folders
        inbound = self._inbound
        folders_path = f"{client.user_path}/mailFolders"
        if inbound.after_fetch is AfterFetch.MOVE:
            self._move_to = await self._folder_id(client, inbound.move_to_folder or "")
        if not inbound.sync_all_folders:
            inbox = (await client.request("GET", f"{folders_path}/inbox")).json()
            self._folders = [str(inbox["id"])]
            return self._folders
        excluded = {self._move_to}
        for name in NOT_RECEIVING:
            try:
                excluded.add(
                    str((await client.request("GET", f"{folders_path}/{name}")).json()["id"])
                )
            except GraphNotFound:
                continue
        self._folders = [
            f["id"] for f in await self._all_folders(client) if f["id"] not in excluded
        ]
        return self._folders

    async def _all_folders(self, client: GraphClient) -> list[dict[str, Any]]:
        """Every mail folder, child folders included, parents before children."""
        result: list[dict[str, Any]] = []
        queue = [f"{client.user_path}/mailFolders"]
        while queue:
            url: str | None = queue.pop(0)
            while url:
                page = (await client.request("GET", url, params={"$top": "100"})).json()
                for folder in page.get("value", []):
                    result.append(folder)
                    if folder.get("childFolderCount"):
                        queue.append(
                            f"{client.user_path}/mailFolders/{quote(folder['id'])}/childFolders"
                        )
                url = page.get("@odata.nextLink")
        return result

    async def _folder_id(self, client: GraphClient, name: str) -> str:
        """A folder's id from a well-known name, an id, or a display name (any depth)."""
        try:
            found = await client.request("GET", f"{client.user_path}/mailFolders/{quote(name)}")
            return str(found.json()["id"])
        except (GraphNotFound, GraphRequestRefused):
            pass
        for folder in await self._all_folders(client):
            if str(folder.get("displayName", "")).casefold() == name.casefold():
                return str(folder["id"])
        raise ChannelMisconfigured(f"move_to_folder {name!r} does not exist", step="folder")


def _header_block(raw: bytes) -> bytes:
    """The MIME's header block (up to the first empty line), for recipient checks and dead
    letters."""
    ends = [(raw.find(sep), sep) for sep in (b"\r\n\r\n", b"\n\n") if sep in raw]
    if not ends:
        return raw
    at, separator = min(ends)
    return raw[: at + len(separator)]


def _graph_id(message: SourceIdentity) -> str:
    if not message.graph_id:
        raise ValueError("a Graph message identity needs its graph_id")
    return message.graph_id


class GraphSourceFactory:
    """Builds a :class:`GraphSource` from a channel (a :data:`~fetcher.sources.SourceFactory`)."""

    def __init__(
        self,
        *,
        secret_box: SecretBox | None,
        options: GraphOptions,
        host_policy: HostPolicy | None = None,
        throttle: MailboxThrottle | None = None,
    ) -> None:
        self._secret_box = secret_box
        self._options = options
        self._host_policy = host_policy
        self._throttle = throttle or MailboxThrottle()
        self._tls = client_contexts(extra_ca_file=options.ca_file)[True]

    def __call__(self, channel: ChannelConfig) -> GraphSource:
        inbound = channel.inbound
        if not isinstance(inbound, GraphInbound):
            raise ChannelMisconfigured("the channel has no Graph inbound settings", step="config")
        return GraphSource(
            channel,
            inbound,
            secrets=self._secret_box,
            tls=self._tls,
            throttle=self._throttle,
            options=self._options,
            host_policy=self._host_policy,
        )
