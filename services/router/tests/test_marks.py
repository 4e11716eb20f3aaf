"""The table of marks: indexes, pending marks, the duplicate window and thread order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from email_channels.events import RouterMark
from router.marks import Marks, normal_message_id

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


def routed(
    message_id: str,
    *,
    at: datetime = NOW,
    campaign: str | None = "support",
    email_id: str = "e-1",
    conversation: str = "conv-1",
) -> RouterMark:
    return RouterMark(
        kind="routed",
        channel_id="ch-1",
        email_id=email_id,
        message_id=message_id,
        content_sha256="h1",
        conversation_id=conversation,
        campaign_id=campaign,
        at=at,
    )


def test_message_ids_match_with_or_without_angle_brackets() -> None:
    """``<a@b>`` (parser) and ``a@b`` are the same Message-ID."""
    assert normal_message_id(" <a@b.example> ") == "a@b.example"
    marks = Marks(window=WEEK)
    marks.apply(routed("a@b.example"))
    assert marks.by_message_id("ch-1", "<a@b.example>") is not None


def test_duplicates_only_within_the_window_with_the_same_content() -> None:
    """Same Message-ID + content hash inside the window is a duplicate; older, or other
    content, or another channel is not."""
    marks = Marks(window=WEEK)
    marks.apply(routed("<m1@x>", at=NOW - timedelta(days=2)))
    assert marks.duplicate_of("ch-1", "<m1@x>", "h1", now=NOW) is not None
    assert marks.duplicate_of("ch-1", "<m1@x>", "other", now=NOW) is None
    assert marks.duplicate_of("ch-2", "<m1@x>", "h1", now=NOW) is None
    assert marks.duplicate_of("ch-1", "<m1@x>", "h1", now=NOW + timedelta(days=6)) is None
    assert marks.duplicate_of("ch-1", None, "h1", now=NOW) is None


def test_pending_marks_are_seen_at_once_and_dropped_on_abort() -> None:
    """Within a batch a second copy is caught; an aborted batch leaves nothing behind; a
    committed one is in the indexes."""
    marks = Marks(window=WEEK)
    marks.stage(routed("<m1@x>"))
    assert marks.seen("e-1")
    assert marks.by_message_id("ch-1", "<m1@x>") is not None
    marks.aborted()
    assert not marks.seen("e-1")
    assert marks.by_message_id("ch-1", "<m1@x>") is None
    marks.stage(routed("<m1@x>"))
    marks.committed()
    assert marks.seen("e-1")
    assert marks.pending() == []


async def test_marks_read_from_the_topic_land_in_the_indexes() -> None:
    """The reader's callback indexes marks; a tombstone changes nothing."""
    marks = Marks(window=WEEK)
    await marks.on_change("email/e-7", routed("<m7@x>", email_id="e-7"))
    await marks.on_change("email/e-8", None)
    assert marks.seen("e-7")
    assert not marks.seen("e-8")
    assert marks.campaign_of("ch-1", "conv-1") == "support"


def test_the_nearest_known_ancestor_decides_the_thread() -> None:
    """In-Reply-To first, then References from the parent back to the root; a sent mark
    without campaign takes its conversation's campaign."""
    marks = Marks(window=WEEK)
    marks.apply(routed("<root@x>", campaign="old", conversation="conv-0"))
    marks.apply(routed("<other@x>", campaign="support", email_id="e-2"))
    marks.apply(
        RouterMark(kind="sent", channel_id="ch-1", message_id="<s@x>", conversation_id="conv-1")
    )
    thread = marks.thread_of("ch-1", "<s@x>", ["<root@x>", "<s@x>"])
    assert thread is not None
    assert (thread.campaign_id, thread.conversation_id, thread.message_id) == (
        "support",
        "conv-1",
        "s@x",
    )
    by_root = marks.thread_of("ch-1", None, ["<root@x>", "<unknown@x>"])
    assert by_root is not None
    assert (by_root.campaign_id, by_root.conversation_id) == ("old", "conv-0")
    assert marks.thread_of("ch-2", "<s@x>", []) is None
    assert marks.thread_of("ch-1", "<unknown@x>", []) is None


def test_a_sent_mark_without_conversation_or_campaign_is_no_thread() -> None:
    """Nothing to follow: the reply goes through the filters."""
    marks = Marks(window=WEEK)
    marks.apply(RouterMark(kind="sent", channel_id="ch-1", message_id="<s@x>"))
    assert marks.thread_of("ch-1", "<s@x>", []) is None


def test_the_indexes_hold_at_most_max_entries_and_drop_the_oldest_first() -> None:
    """Past the count bound the oldest mark is forgotten (its email id, Message-ID and
    conversation); the newer ones still answer."""
    marks = Marks(window=WEEK, max_entries=2, clock=lambda: NOW)
    for n in range(3):
        marks.apply(routed(f"<m{n}@x>", email_id=f"e-{n}", conversation=f"conv-{n}"))
    assert len(marks) == 2
    assert marks.dropped == 1
    assert not marks.seen("e-0")
    assert marks.by_message_id("ch-1", "<m0@x>") is None
    assert marks.campaign_of("ch-1", "conv-0") is None
    assert marks.seen("e-1")
    assert marks.seen("e-2")


def test_marks_older_than_the_retention_are_dropped() -> None:
    """A mark read from the topic after its retention is not held; a recent one is."""
    marks = Marks(window=WEEK, retention=timedelta(days=30), clock=lambda: NOW)
    marks.apply(routed("<old@x>", email_id="e-old", at=NOW - timedelta(days=31)))
    marks.apply(routed("<new@x>", email_id="e-new", at=NOW - timedelta(days=29)))
    assert not marks.seen("e-old")
    assert marks.seen("e-new")
    assert len(marks) == 1


def test_a_mark_applied_twice_is_held_once_and_a_newer_mark_survives_the_old_ones_drop() -> None:
    """The router applies its own marks at commit and reads them back: one entry. When the
    older of two marks for one Message-ID is dropped, the newer one still answers."""
    marks = Marks(window=WEEK, max_entries=2, clock=lambda: NOW)
    marks.apply(routed("<m@x>", email_id="e-1"))
    marks.apply(routed("<m@x>", email_id="e-1"))
    assert len(marks) == 1
    marks.apply(routed("<m@x>", email_id="e-2", at=NOW + timedelta(seconds=1)))
    marks.apply(routed("<z@x>", email_id="e-3"))
    assert not marks.seen("e-1")
    found = marks.by_message_id("ch-1", "<m@x>")
    assert found is not None
    assert found.email_id == "e-2"


def test_a_retention_shorter_than_the_duplicate_window_is_refused() -> None:
    """Dropping marks before the window ends would end duplicate detection early."""
    with pytest.raises(ValueError, match="shorter than the duplicate window"):
        Marks(window=WEEK, retention=timedelta(days=1))
