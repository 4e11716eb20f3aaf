"""An in-memory :class:`~fetcher.sources.MailSource`, for unit tests of what drives a source.

:class:`FakeMailbox` is one folder with UIDs (and a UIDVALIDITY that a test may change);
``mailbox.source(channel)`` opens a :class:`FakeSource` on it. Tests steer it through plain
attributes: errors to raise on open / settle, UIDs whose content cannot be read, a size limit,
a recipient for recipient-only checks. Every call is written to ``journal`` in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from email_channels.events import FetchCursor, FolderCursor, SourceIdentity
from fetcher.recipients import addressed_to
from fetcher.sources import Fetched, Outcome, Pending

if TYPE_CHECKING:
    from collections.abc import Sequence

    from email_channels.events import ChannelConfig


@dataclass
class Journal:
    """What happened, in order, across a fake mailbox and whatever else a test records."""

    entries: list[tuple[str, object]] = field(default_factory=list)

    def add(self, what: str, detail: object) -> None:
        self.entries.append((what, detail))

    def kinds(self, *names: str) -> list[tuple[str, object]]:
        return [entry for entry in self.entries if entry[0] in names]


class FakeMailbox:
    """A folder with UIDs; a source opened on it behaves like a MailSource."""

    def __init__(self, journal: Journal | None = None, uidvalidity: int = 7) -> None:
        self.journal = journal or Journal()
        self.uidvalidity = uidvalidity
        self.messages: dict[int, bytes] = {}
        self.settled: list[int] = []
        self.next_uid = 1
        self.news = asyncio.Event()
        self.open_errors: list[Exception] = []
        self.settle_errors: list[Exception] = []
        self.unreadable: set[int] = set()
        self.max_size: int | None = None
        self.recipient: str | None = None
        self.opened = 0

    def deliver(self, raw: bytes) -> int:
        uid = self.next_uid
        self.messages[uid] = raw
        self.next_uid += 1
        self.news.set()
        return uid

    def renumber(self, uidvalidity: int) -> None:
        """What a UIDVALIDITY change does: same messages, new UIDs from 1."""
        self.uidvalidity = uidvalidity
        self.messages = dict(enumerate(self.messages.values(), start=1))
        self.next_uid = len(self.messages) + 1

    def source(self, channel: ChannelConfig) -> FakeSource:  # noqa: ARG002 - a SourceFactory
        return FakeSource(self)


class FakeSource:
    def __init__(self, box: FakeMailbox) -> None:
        self.box = box

    async def open(self) -> None:
        self.box.opened += 1
        if self.box.open_errors:
            raise self.box.open_errors.pop(0)

    async def close(self) -> None:
        self.box.journal.add("close", None)

    async def pending(self, cursor: FetchCursor) -> Pending:
        box = self.box
        folder = cursor.folders.get("INBOX")
        if folder is None or folder.uidvalidity != box.uidvalidity:
            present = (max(box.messages) if box.messages else None) if folder else None
            folder = FolderCursor(uidvalidity=box.uidvalidity, recheck_through=present)
            cursor = cursor.model_copy(update={"folders": {"INBOX": folder}})
        box.news.clear()
        messages = [
            SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=box.uidvalidity, uid=uid)
            for uid in sorted(box.messages)
            if uid > folder.last_uid
        ]
        through = folder.recheck_through or 0
        recheck = frozenset(m.key for m in messages if (m.uid or 0) <= through)
        return Pending(cursor, messages, recheck)

    async def fetch(self, messages: Sequence[SourceIdentity]) -> list[Fetched]:
        box = self.box
        out: list[Fetched] = []
        for message in messages:
            box.journal.add("fetch", message.uid)
            raw = box.messages.get(message.uid or 0)
            if raw is None:
                out.append(Fetched(message, Outcome.VANISHED))
            elif box.recipient is not None and not addressed_to(raw, box.recipient):
                out.append(Fetched(message, Outcome.NOT_FOR_CHANNEL, size=len(raw)))
            elif box.max_size is not None and len(raw) > box.max_size:
                head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                out.append(Fetched(message, Outcome.OVERSIZE, size=len(raw), headers=head))
            elif message.uid in box.unreadable:
                out.append(Fetched(message, Outcome.UNREADABLE))
            else:
                out.append(Fetched(message, Outcome.FETCHED, raw=raw, size=len(raw)))
        return out

    async def settle(self, messages: Sequence[SourceIdentity]) -> None:
        uids = [m.uid or 0 for m in messages]
        self.box.journal.add("settle", uids)
        if self.box.settle_errors:
            raise self.box.settle_errors.pop(0)
        self.box.settled.extend(uids)

    def advance(self, cursor: FetchCursor, messages: Sequence[SourceIdentity]) -> FetchCursor:
        current = cursor.folders.get("INBOX")
        last = max([current.last_uid if current else 0, *(m.uid or 0 for m in messages)])
        through = current.recheck_through if current else None
        folder = FolderCursor(
            uidvalidity=self.box.uidvalidity,
            last_uid=last,
            recheck_through=through if through is not None and last < through else None,
        )
        return cursor.model_copy(update={"folders": {"INBOX": folder}})

    async def wait_for_news(self) -> None:
        await self.box.news.wait()
