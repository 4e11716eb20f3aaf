"""Dead letters on email.dlq: list them, show one, replay them to the topic they came from.

A dead letter (:class:`~email_channels.events.DeadLetter`) carries the original record: its
topic, key, headers and value (inline, or by blob reference when it was large). Replaying
publishes that record again with the durable producer, plus one header naming the dead letter
(:data:`~email_channels.headers.REPLAY_HEADER`), to the topic it was first written to: the
``original-topic`` header (:data:`~email_channels.headers.ORIGINAL_TOPIC_HEADER`) when a stage
had re-published it (the sender's retry topics), else the dead letter's ``source_topic``. The
retry bookkeeping headers are dropped, so a replayed outbound starts its retries afresh. The
downstream are idempotent (stable email ids, the sender's sent ledger), so a record replayed
twice is harmless; replay is still an operator's decision, one filter at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from email_channels.codec import decode, decode_key
from email_channels.errors import PermanentError
from email_channels.events import DeadLetter
from email_channels.headers import (
    ORIGINAL_TOPIC_HEADER,
    REPLAY_HEADER,
    RETRY_DUE_HEADER,
    RETRY_LEVEL_HEADER,
)
from email_channels.producer import EventProducer
from email_channels.topics import Topic
from email_channels_cli.tail import records

if TYPE_CHECKING:
    from collections.abc import Callable

    from email_channels.blobstore import BlobStore
    from email_channels.settings import KafkaSettings

CHANNEL_KEYED = {Topic.CHANNELS, Topic.FILTERS, Topic.FETCH_CURSORS, Topic.RAW}
"""Topics whose record key is the channel id (design.md §3)."""

NOT_REPLAYED_HEADERS = frozenset(
    {REPLAY_HEADER, ORIGINAL_TOPIC_HEADER, RETRY_LEVEL_HEADER, RETRY_DUE_HEADER}
)
"""Headers a stage added on its way (and a previous replay's): not part of the replayed record."""


class LetterNotFound(PermanentError):
    """No dead letter at the partition/offset asked for."""


@dataclass(frozen=True)
class Letter:
    """A dead letter and where it is on email.dlq."""

    partition: int
    offset: int
    letter: DeadLetter

    @property
    def ref(self) -> str:
        """``partition/offset``: how ``dlq show`` and ``dlq replay --ref`` name it."""
        return f"{self.partition}/{self.offset}"


def replay_target(letter: DeadLetter) -> str:
    """Where a replay publishes: the ``original-topic`` header when present, else the topic the
    dead letter was read from."""
    return letter.original_headers.get(ORIGINAL_TOPIC_HEADER) or letter.source_topic


def channel_of(letter: DeadLetter, settings: KafkaSettings) -> str | None:
    """The channel a dead letter belongs to: the original value's ``channel_id`` field (raw,
    routed, outbound, delivery... records), else the key of a channel-keyed topic."""
    if letter.original_value is not None:
        try:
            value = json.loads(letter.original_value)
        except ValueError:
            value = None
        channel = value.get("channel_id") if isinstance(value, dict) else None
        if isinstance(channel, str):
            return channel
    keyed = {settings.topics(topic) for topic in CHANNEL_KEYED}
    if letter.source_topic in keyed and letter.original_key is not None:
        return decode_key(letter.original_key)
    return None


async def read_letters(
    settings: KafkaSettings, *, channel: str | None = None, stage: str | None = None
) -> tuple[list[Letter], int]:
    """The dead letters now on email.dlq matching the filters, oldest first per partition,
    and how many records could not be read as dead letters."""
    found: list[Letter] = []
    unreadable = 0
    async for record in records(settings, settings.topics.dlq):
        try:
            letter = decode(DeadLetter, record.value)
        except PermanentError:
            unreadable += 1
            continue
        if stage is not None and letter.stage != stage:
            continue
        if channel is not None and channel_of(letter, settings) != channel:
            continue
        found.append(Letter(record.partition, record.offset, letter))
    return found, unreadable


async def find_letter(settings: KafkaSettings, ref: str) -> Letter:
    """The dead letter at ``partition/offset``."""
    partition, _, offset = ref.partition("/")
    if not (partition.isdigit() and offset.isdigit()):
        raise LetterNotFound(f"{ref!r} is not partition/offset, e.g. 0/42")
    letters, _ = await read_letters(settings)
    for letter in letters:
        if (letter.partition, letter.offset) == (int(partition), int(offset)):
            return letter
    raise LetterNotFound(f"no dead letter at {settings.topics.dlq} {ref}")


async def replay(
    settings: KafkaSettings,
    letters: list[Letter],
    *,
    blobs: BlobStore,
    on_replayed: Callable[[Letter], None] | None = None,
) -> int:
    """Publish each letter's original record to :func:`replay_target`; the number replayed."""
    async with EventProducer(settings, client_id="email-channels-cli-replay") as producer:
        for item in letters:
            letter = item.letter
            value = letter.original_value
            if value is None and letter.original_value_ref is not None:
                value = await blobs.get(letter.original_value_ref)
            headers = [
                (k, v.encode("utf-8"))
                for k, v in letter.original_headers.items()
                if k not in NOT_REPLAYED_HEADERS
            ]
            headers.append((REPLAY_HEADER, f"{settings.topics.dlq}/{item.ref}".encode()))
            target = replay_target(letter)
            await producer.publish_raw(target, letter.original_key, value, headers)
            if on_replayed is not None:
                on_replayed(item)
    return len(letters)
