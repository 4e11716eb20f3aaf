"""Retry topics: a transient failure comes back later instead of blocking its partition.

Level N (1, 2, ...) of the schedule is the topic ``<email.outbound>.retry.N`` with delay
``delays_s[N-1]`` (default 1 min, 10 min, 1 h). An outbound that failed transiently at level
N-1 (level 0 is ``email.outbound`` itself) is re-published unchanged — same key, value and
headers — to level N with two more headers: ``retry-level`` and ``retry-due-ms``, plus
``original-topic`` so a DLQ replay knows where it first came from. The sender consumes every
level with :class:`email_channels.lanes.LaneConsumer`, whose ``due`` hook (:meth:`due`) keeps a
not-yet-due partition paused, so waiting costs no worker and no memory. After the last level
the failure is final: ``failed``, and the record goes to ``email.dlq`` (retriable, replayable).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from email_channels.codec import header
from email_channels.headers import (
    ORIGINAL_TOPIC_HEADER,
    RETRY_DUE_HEADER,
    RETRY_LEVEL_HEADER,
)
from email_channels.topics import Topic, TopicSpec

if TYPE_CHECKING:
    from email_channels.consume import Record
    from email_channels.topics import TopicNames
    from sender.handlers import RawPublisher

DEFAULT_DELAYS_S = (60.0, 600.0, 3600.0)


class RetrySchedule:
    def __init__(self, topics: TopicNames, delays_s: tuple[float, ...] = DEFAULT_DELAYS_S) -> None:
        self._topics = topics
        self.delays_s = delays_s

    def topic(self, level: int) -> str:
        return f"{self._topics.outbound}.retry.{level}"

    @property
    def topic_names(self) -> list[str]:
        return [self.topic(level) for level in range(1, len(self.delays_s) + 1)]

    def specs(self) -> dict[str, TopicSpec]:
        """For ``ensure_topics(extra_topics=...)``."""
        return {
            self.topic(level): TopicSpec(
                Topic.OUTBOUND,
                "conversation id",
                "delete",
                "OutboundEmail",
                f"outbound emails to try again {delay:g} s after a transient failure "
                f"(sender retry level {level})",
            )
            for level, delay in enumerate(self.delays_s, start=1)
        }

    def level(self, record: Record) -> int:
        """0 for ``email.outbound``, N for a record of retry level N."""
        value = header(record.headers, RETRY_LEVEL_HEADER)
        return int(value) if value and value.isdigit() else 0

    def has_next(self, level: int) -> bool:
        return level < len(self.delays_s)

    def due(self, record: Record) -> float | None:
        """Epoch seconds at which a retry record is due; None for a first delivery."""
        value = header(record.headers, RETRY_DUE_HEADER)
        return int(value) / 1000 if value and value.isdigit() else None

    async def schedule(self, record: Record, level: int, publisher: RawPublisher) -> float:
        """Re-publish ``record`` to retry ``level``; returns when it is due (epoch seconds)."""
        due = time.time() + self.delays_s[level - 1]
        kept = [
            (name, value)
            for name, value in (record.headers or ())
            if name not in {RETRY_LEVEL_HEADER, RETRY_DUE_HEADER, ORIGINAL_TOPIC_HEADER}
        ]
        original = header(record.headers, ORIGINAL_TOPIC_HEADER) or record.topic
        headers = [
            *kept,
            (RETRY_LEVEL_HEADER, str(level).encode()),
            (RETRY_DUE_HEADER, str(int(due * 1000)).encode()),
            (ORIGINAL_TOPIC_HEADER, original.encode()),
        ]
        await publisher.publish_raw(self.topic(level), record.key, record.value, headers)
        return due
