"""The router's table of what it has routed and what the product has sent.

One record per fact in the compacted topic ``email.router-state`` (value
:class:`~email_channels.events.RouterMark`):

- ``email/<email id>`` (kind ``routed``): this fetched message was routed, with its channel,
  Message-ID, content hash, conversation and campaign;
- ``sent/<outbound id>`` (kind ``sent``): the product sent this Message-ID from the channel,
  in that conversation and campaign (from ``email.delivery``).

Every router instance reads the whole topic (read_committed) into three in-memory indexes:
seen email ids (a re-fetch is dropped), Message-ID per channel -> its latest mark (the same mail
arriving again by another path within the window is dropped; a reply (In-Reply-To /
References) joins its conversation and campaign), and conversation -> campaign. The router
writes its marks in the same Kafka transaction as the routed records and the consumed offsets,
so the table never disagrees with ``email.routed``; marks of a batch in progress are visible to
the rest of the batch, applied to the indexes when the transaction commits and dropped when
it aborts. A newly assigned partition is routed only after the reader has caught up.

The indexes are bounded by age and count (:class:`Marks`); the duplicate window is checked
against each mark's time.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from email_channels.events import RouterMark

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from email_channels.events import RoutedEmail


def normal_message_id(message_id: str) -> str:
    """A Message-ID as a key: without surrounding blanks and angle brackets."""
    return message_id.strip().removeprefix("<").removesuffix(">").strip()


def email_key(email_id: str) -> str:
    return f"email/{email_id}"


def sent_key(outbound_id: str) -> str:
    return f"sent/{outbound_id}"


def content_sha256(routed: RoutedEmail) -> str:
    """Hash of what a reader sees (addresses, subject, date, bodies, attachment hashes), not of
    the raw MIME: the same mail fetched from two folders differs in its trace headers.

    Each field is fed to the hash as its UTF-8 bytes behind their length (a missing field
    has its own marker), so no two contents share an input: cheaper than hashing a JSON
    rendering of the bodies (measured: 2.5x faster on 25 KB mail).
    """
    fields = (
        routed.from_.address.casefold() if routed.from_ else None,
        _SEPARATOR.join(sorted(a.address.casefold() for a in routed.to)),
        _SEPARATOR.join(sorted(a.address.casefold() for a in routed.cc)),
        routed.subject,
        routed.date.isoformat() if routed.date else None,
        routed.text_body,
        routed.html_body,
        _SEPARATOR.join(sorted(a.sha256 for a in routed.attachments)),
    )
    digest = hashlib.sha256(_CONTENT_HASH_VERSION)
    for field in fields:
        if field is None:
            digest.update(_MISSING)
            continue
        data = field.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


_CONTENT_HASH_VERSION = b"email-content/v2\n"
_SEPARATOR = "\n"  # never inside an address or a hex digest
_MISSING = b"\xff" * 8  # not a length any field has


@dataclass(frozen=True)
class Thread:
    """The campaign a reply joins, its conversation (``None``: mail we sent outside any
    conversation; the reply's own conversation id is used), and the Message-ID it was found by."""

    conversation_id: str | None
    campaign_id: str
    message_id: str


DEFAULT_RETENTION = timedelta(days=30)
"""How long a mark stays in the in-memory indexes (re-fetch and thread affinity look-ups)."""
DEFAULT_MAX_ENTRIES = 250_000
"""Marks held at most (measured: about 1.7 KB each with the indexes, so ~430 MB)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Marks:
    """The indexes over the table, plus the marks of the transaction in progress.

    Bounded: a mark is dropped from the indexes once it is older than ``retention`` or when
    more than ``max_entries`` are held, oldest read first (marks are read in topic order, so
    this is their age order up to the spread of one batch). A dropped mark no longer catches
    a re-fetch of its email or a reply to it (the reply then goes through the filters);
    ``retention`` must not be shorter than the duplicate ``window``.
    """

    def __init__(
        self,
        *,
        window: timedelta,
        retention: timedelta = DEFAULT_RETENTION,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if retention < window:
            msg = f"marks retention ({retention}) is shorter than the duplicate window ({window})"
            raise ValueError(msg)
        self._window = window
        self._retention = retention
        self._max_entries = max_entries
        self._clock = clock
        self._order: deque[RouterMark] = deque()
        """Indexed marks, in the order they were applied (the oldest first)."""
        self._emails: dict[str, RouterMark] = {}
        self._messages: dict[tuple[str, str], RouterMark] = {}
        self._campaigns: dict[tuple[str, str], RouterMark] = {}
        self._pending: list[RouterMark] = []
        self._pending_emails: set[str] = set()
        self._pending_messages: dict[tuple[str, str], RouterMark] = {}
        self._pending_campaigns: dict[tuple[str, str], str] = {}
        self.dropped = 0
        """Marks dropped from the indexes by the bounds so far."""

    def __len__(self) -> int:
        return len(self._order)

    async def on_change(self, _key: str, mark: RouterMark | None) -> None:
        """The topic reader's callback (:class:`~email_channels.compacted.CompactedView`)."""
        if mark is not None:
            self.apply(mark)

    def apply(self, mark: RouterMark) -> None:
        """Add one committed mark to the indexes (applying it twice changes nothing: the
        router applies its own marks at commit and reads them back from the topic)."""
        message = (mark.channel_id, normal_message_id(mark.message_id)) if mark.message_id else None
        if mark.kind == "routed" and mark.email_id:
            if self._emails.get(mark.email_id) == mark:
                return
            self._emails[mark.email_id] = mark
        elif message is not None and self._messages.get(message) == mark:
            return
        if message is not None:
            self._messages[message] = mark
        if mark.kind == "routed" and mark.conversation_id and mark.campaign_id:
            self._campaigns[(mark.channel_id, mark.conversation_id)] = mark
        self._order.append(mark)
        self._drop_old()

    def _drop_old(self) -> None:
        order, horizon = self._order, self._clock() - self._retention
        while order and (len(order) > self._max_entries or order[0].at < horizon):
            self._forget(order.popleft())
            self.dropped += 1

    def _forget(self, mark: RouterMark) -> None:
        """Remove ``mark`` from every index that still holds it (not a later mark's entry)."""
        if mark.email_id and self._emails.get(mark.email_id) is mark:
            del self._emails[mark.email_id]
        if mark.message_id:
            message = (mark.channel_id, normal_message_id(mark.message_id))
            if self._messages.get(message) is mark:
                del self._messages[message]
        if mark.conversation_id:
            conversation = (mark.channel_id, mark.conversation_id)
            if self._campaigns.get(conversation) is mark:
                del self._campaigns[conversation]

    # --- the transaction in progress ---

    def stage(self, mark: RouterMark) -> None:
        self._pending.append(mark)
        if mark.email_id:
            self._pending_emails.add(mark.email_id)
        if mark.message_id:
            self._pending_messages[(mark.channel_id, normal_message_id(mark.message_id))] = mark
        if mark.kind == "routed" and mark.conversation_id and mark.campaign_id:
            self._pending_campaigns[(mark.channel_id, mark.conversation_id)] = mark.campaign_id

    def pending(self) -> list[RouterMark]:
        return list(self._pending)

    def committed(self) -> None:
        """The transaction holding the pending marks committed: they are in the table now."""
        for mark in self._pending:
            self.apply(mark)
        self.aborted()

    def aborted(self) -> None:
        self._pending.clear()
        self._pending_emails.clear()
        self._pending_messages.clear()
        self._pending_campaigns.clear()

    # --- questions (each a dict or set look-up) ---

    def seen(self, email_id: str) -> bool:
        return email_id in self._pending_emails or email_id in self._emails

    def by_message_id(self, channel_id: str, message_id: str) -> RouterMark | None:
        key = (channel_id, normal_message_id(message_id))
        return self._pending_messages.get(key) or self._messages.get(key)

    def campaign_of(self, channel_id: str, conversation_id: str) -> str | None:
        key = (channel_id, conversation_id)
        pending = self._pending_campaigns.get(key)
        if pending is not None:
            return pending
        mark = self._campaigns.get(key)
        return mark.campaign_id if mark is not None else None

    def duplicate_of(
        self, channel_id: str, message_id: str | None, content: str, *, now: datetime
    ) -> RouterMark | None:
        """The routed mark of the same Message-ID with the same content within the window."""
        if not message_id:
            return None
        mark = self.by_message_id(channel_id, message_id)
        if mark is None or mark.kind != "routed" or mark.content_sha256 != content:
            return None
        return mark if now - mark.at <= self._window else None

    def thread_of(
        self, channel_id: str, in_reply_to: str | None, references: Iterable[str]
    ) -> Thread | None:
        """The thread of the nearest earlier message we routed or sent: In-Reply-To first, then
        References from the last (the parent) to the first (the root)."""
        candidates = [in_reply_to] if in_reply_to else []
        candidates.extend(reversed(list(references)))
        for message_id in candidates:
            mark = self.by_message_id(channel_id, message_id)
            if mark is None:
                continue
            campaign = mark.campaign_id
            if campaign is None and mark.conversation_id is not None:
                campaign = self.campaign_of(channel_id, mark.conversation_id)
            if campaign is not None:
                return Thread(mark.conversation_id, campaign, normal_message_id(message_id))
        return None


def routed_mark(routed: RoutedEmail, content: str) -> RouterMark:
    """The mark one routed email leaves in the table (key: :func:`email_key`)."""
    return RouterMark(
        kind="routed",
        channel_id=routed.channel_id,
        email_id=routed.email_id,
        message_id=routed.message_id,
        content_sha256=content,
        conversation_id=routed.conversation_id,
        campaign_id=routed.campaign_id,
        at=datetime.now(UTC),
    )
