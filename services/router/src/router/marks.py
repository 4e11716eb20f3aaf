"""The router's table of what it has routed and what the product has sent.

Three kinds of mark, all in the compacted topic ``email.router-state`` (value
:class:`~email_channels.events.RouterMark`):

- ``email/<email id>``: this fetched message was routed. A re-fetch (same email id) is dropped.
- ``msg/<channel id>/<Message-ID>``: a message with this Message-ID and content hash was routed
  on the channel (or sent from it, from ``email.delivery``). The same mail arriving again by
  another path (a second folder, a re-delivery) within the window is dropped; a reply to it
  (In-Reply-To / References) joins its conversation and campaign.
- ``conv/<channel id>/<conversation id>``: the campaign a conversation was routed to (for sent
  mail whose delivery event carries a conversation but no campaign).

The router writes its marks in the same Kafka transaction as the routed records and the
consumed offsets, so the table never disagrees with ``email.routed``. Every router instance
reads the whole topic (a :class:`~email_channels.compacted.CompactedView`, read_committed) and
catches up before it routes a partition it was just assigned. Lookups see, in order: the marks
of the batch in progress (not committed yet), the marks this instance committed that the view
has not read back yet, and the view.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from email_channels.events import RouterMark

if TYPE_CHECKING:
    from collections.abc import Iterable

    from email_channels.events import RoutedEmail

RECENT_MAX = 200_000
"""Marks kept for read-back after commit; the view has read them long before this many more."""


class MarkLookup(Protocol):
    def get(self, key: str, /) -> RouterMark | None: ...


def normal_message_id(message_id: str) -> str:
    """A Message-ID as a key: without surrounding blanks and angle brackets."""
    return message_id.strip().removeprefix("<").removesuffix(">").strip()


def email_key(email_id: str) -> str:
    return f"email/{email_id}"


def message_key(channel_id: str, message_id: str) -> str:
    return f"msg/{channel_id}/{normal_message_id(message_id)}"


def conversation_key(channel_id: str, conversation_id: str) -> str:
    return f"conv/{channel_id}/{conversation_id}"


def content_sha256(routed: RoutedEmail) -> str:
    """Hash of what a reader sees (addresses, subject, date, bodies, attachment hashes), not of
    the raw MIME: the same mail fetched from two folders differs in its trace headers."""
    content = {
        "from": routed.from_.address.casefold() if routed.from_ else None,
        "to": sorted(a.address.casefold() for a in routed.to),
        "cc": sorted(a.address.casefold() for a in routed.cc),
        "subject": routed.subject,
        "date": routed.date.isoformat() if routed.date else None,
        "text": routed.text_body,
        "html": routed.html_body,
        "attachments": sorted(a.sha256 for a in routed.attachments),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Thread:
    """The campaign a reply joins, its conversation (``None``: mail we sent outside any
    conversation; the reply's own conversation id is used), and the Message-ID it was found by."""

    conversation_id: str | None
    campaign_id: str
    message_id: str


class Marks:
    """Lookups over the table, plus the marks of the transaction in progress."""

    def __init__(
        self, view: MarkLookup, *, window: timedelta, recent_max: int = RECENT_MAX
    ) -> None:
        self._view = view
        self._window = window
        self._recent_max = recent_max
        self._pending: dict[str, RouterMark] = {}
        self._recent: dict[str, RouterMark] = {}

    def get(self, key: str) -> RouterMark | None:
        mark = self._pending.get(key)
        if mark is None:
            mark = self._recent.get(key)
        if mark is None:
            mark = self._view.get(key)
        return mark

    # --- the transaction in progress ---

    def stage(self, key: str, mark: RouterMark) -> None:
        self._pending[key] = mark

    def pending(self) -> list[tuple[str, RouterMark]]:
        return list(self._pending.items())

    def committed(self) -> None:
        """The transaction holding the pending marks committed: keep them until read back."""
        self._recent.update(self._pending)
        self._pending.clear()
        overflow = len(self._recent) - self._recent_max
        for key in list(self._recent)[: max(0, overflow)]:
            del self._recent[key]

    def aborted(self) -> None:
        self._pending.clear()

    # --- questions ---

    def seen(self, email_id: str) -> bool:
        return self.get(email_key(email_id)) is not None

    def duplicate_of(
        self, channel_id: str, message_id: str | None, content: str, *, now: datetime
    ) -> RouterMark | None:
        """The routed mark of the same Message-ID with the same content within the window."""
        if not message_id:
            return None
        mark = self.get(message_key(channel_id, message_id))
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
            mark = self.get(message_key(channel_id, message_id))
            if mark is None:
                continue
            campaign = mark.campaign_id
            if campaign is None and mark.conversation_id is not None:
                conversation = self.get(conversation_key(channel_id, mark.conversation_id))
                campaign = conversation.campaign_id if conversation is not None else None
            if campaign is not None:
                return Thread(mark.conversation_id, campaign, normal_message_id(message_id))
        return None


def routed_marks(routed: RoutedEmail, content: str) -> list[tuple[str, RouterMark]]:
    """The marks one routed email leaves in the table."""
    mark = RouterMark(
        kind="routed",
        channel_id=routed.channel_id,
        email_id=routed.email_id,
        message_id=routed.message_id,
        content_sha256=content,
        conversation_id=routed.conversation_id,
        campaign_id=routed.campaign_id,
        at=datetime.now(UTC),
    )
    marks = [(email_key(routed.email_id), mark)]
    if routed.message_id:
        marks.append((message_key(routed.channel_id, routed.message_id), mark))
    marks.append((conversation_key(routed.channel_id, routed.conversation_id), mark))
    return marks
