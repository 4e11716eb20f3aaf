"""The table of marks: lookups through pending, recent and the view; window; thread order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from email_channels.events import RouterMark
from router.marks import Marks, conversation_key, message_key, normal_message_id

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def routed(message_id: str, *, at: datetime = NOW, campaign: str | None = "support") -> RouterMark:
    return RouterMark(
        kind="routed",
        channel_id="ch-1",
        email_id="e-1",
        message_id=message_id,
        content_sha256="h1",
        conversation_id="conv-1",
        campaign_id=campaign,
        at=at,
    )


def test_message_ids_are_keys_without_angle_brackets() -> None:
    """``<a@b>`` and ``a@b`` (sender vs parser spelling) are the same key."""
    assert normal_message_id(" <a@b.example> ") == "a@b.example"
    assert message_key("ch-1", "<a@b.example>") == message_key("ch-1", "a@b.example")


def test_duplicates_only_within_the_window_with_the_same_content() -> None:
    """Same Message-ID + content hash inside the window is a duplicate; older, or other
    content, or another channel is not."""
    view = {message_key("ch-1", "m1@x"): routed("m1@x", at=NOW - timedelta(days=2))}
    marks = Marks(view, window=timedelta(days=7))
    assert marks.duplicate_of("ch-1", "<m1@x>", "h1", now=NOW) is not None
    assert marks.duplicate_of("ch-1", "<m1@x>", "other", now=NOW) is None
    assert marks.duplicate_of("ch-2", "<m1@x>", "h1", now=NOW) is None
    assert marks.duplicate_of("ch-1", "<m1@x>", "h1", now=NOW + timedelta(days=6)) is None
    assert marks.duplicate_of("ch-1", None, "h1", now=NOW) is None


def test_pending_marks_are_seen_at_once_and_dropped_on_abort() -> None:
    """Within a batch a second copy is caught; an aborted batch leaves nothing behind; a
    committed one stays visible until the view reads it back."""
    marks = Marks({}, window=timedelta(days=7))
    marks.stage("email/e-1", routed("m1@x"))
    assert marks.seen("e-1")
    marks.aborted()
    assert not marks.seen("e-1")
    marks.stage("email/e-1", routed("m1@x"))
    marks.committed()
    assert marks.seen("e-1")
    assert marks.pending() == []


def test_recent_marks_are_bounded() -> None:
    """Marks kept for read-back are capped, oldest out first."""
    marks = Marks({}, window=timedelta(days=7), recent_max=2)
    for n in range(3):
        marks.stage(f"email/e-{n}", routed("m@x"))
        marks.committed()
    assert [marks.seen(f"e-{n}") for n in range(3)] == [False, True, True]


def test_the_nearest_known_ancestor_decides_the_thread() -> None:
    """In-Reply-To first, then References from the parent back to the root; a sent mark
    without campaign takes its conversation's campaign."""
    sent = RouterMark(kind="sent", channel_id="ch-1", message_id="<s@x>", conversation_id="conv-1")
    view = {
        message_key("ch-1", "root@x"): routed("root@x", campaign="old"),
        message_key("ch-1", "s@x"): sent,
        conversation_key("ch-1", "conv-1"): routed("root@x", campaign="support"),
    }
    marks = Marks(view, window=timedelta(days=7))
    thread = marks.thread_of("ch-1", "<s@x>", ["<root@x>", "<s@x>"])
    assert thread is not None
    assert (thread.campaign_id, thread.conversation_id, thread.message_id) == (
        "support",
        "conv-1",
        "s@x",
    )
    by_root = marks.thread_of("ch-1", None, ["<root@x>", "<unknown@x>"])
    assert by_root is not None
    assert by_root.campaign_id == "old"
    assert marks.thread_of("ch-2", "<s@x>", []) is None
    assert marks.thread_of("ch-1", "<unknown@x>", []) is None
