"""Re-encrypt every stored secret with the newest key of the keyring (``secrets rotate``).

Step 2 of a key rotation (see :mod:`email_channels.secretbox`): after the new key was put first
in ``EMAIL_CHANNELS_SECRET_KEYS`` and the services rolled, this reads email.channels to its end,
re-encrypts each secret not on the active key, and writes the channel back as the next revision.
Afterwards no record uses an old key id and the old key can leave the keyring.

Concurrent edits: each write is the read revision + 1, so a client of config-api holding the
old revision gets a 409 and re-reads. Right before writing, the channel is checked again at the
latest position; a config-api write landing in the same instant as ours would still win over
it (and then carries a secret on the new key anyway if it was re-entered, else the old key:
``secrets rotate`` reports nothing left to do only when a second run finds nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from email_channels.compacted import CompactedView
from email_channels.events import ChannelConfig, utcnow
from email_channels.producer import EventProducer
from email_channels.secretbox import EncryptedSecret, SecretDecryptError

if TYPE_CHECKING:
    from collections.abc import Callable

    from email_channels.secretbox import SecretBox
    from email_channels.settings import KafkaSettings


@dataclass
class RotationReport:
    """What a rotation found and did."""

    channels: int = 0
    rotated_channels: list[str] = field(default_factory=list)
    rotated_secrets: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """channel id -> why its secrets could not be re-encrypted (e.g. key id not in keyring)."""


def rotated(model: BaseModel, box: SecretBox) -> tuple[BaseModel, int]:
    """``model`` with every nested secret on the active key, and how many were re-encrypted."""
    updates: dict[str, Any] = {}
    count = 0
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, EncryptedSecret):
            if box.needs_rotation(value):
                updates[name] = box.rotate(value)
                count += 1
        elif isinstance(value, BaseModel):
            new, n = rotated(value, box)
            if n:
                updates[name], count = new, count + n
        elif isinstance(value, list) and any(isinstance(item, BaseModel) for item in value):
            items, in_list = [], 0
            for item in value:
                new_item, n = rotated(item, box) if isinstance(item, BaseModel) else (item, 0)
                items.append(new_item)
                in_list += n
            if in_list:
                updates[name], count = items, count + in_list
    return (model.model_copy(update=updates) if updates else model), count


async def rotate_secrets(
    settings: KafkaSettings,
    box: SecretBox,
    *,
    dry_run: bool = False,
    on_channel: Callable[[str], None] | None = None,
    timeout_s: float = 60.0,
) -> RotationReport:
    """Re-encrypt the secrets of every channel on email.channels with ``box``'s active key."""
    report = RotationReport()
    view = CompactedView(
        settings, settings.topics.channels, ChannelConfig, client_id="email-channels-cli-rotate"
    )
    await view.start(timeout=timeout_s)
    try:
        channels = view.values()
        report.channels = len(channels)
        async with EventProducer(settings, client_id="email-channels-cli-rotate") as producer:
            for seen in channels:
                await _rotate_one(seen, view, producer, box, report, dry_run=dry_run)
                if on_channel is not None:
                    on_channel(seen.id)
    finally:
        await view.stop()
    return report


async def _rotate_one(
    seen: ChannelConfig,
    view: CompactedView[ChannelConfig],
    producer: EventProducer,
    box: SecretBox,
    report: RotationReport,
    *,
    dry_run: bool,
) -> None:
    try:
        new, count = rotated(seen, box)
    except SecretDecryptError as exc:
        report.failed[seen.id] = str(exc)
        return
    if not count:
        return
    if not dry_run:
        await view.catch_up()
        current = view.get(seen.id)
        if current is None or current.revision != seen.revision:
            report.failed[seen.id] = "changed while rotating: run secrets rotate again"
            return
        assert isinstance(new, ChannelConfig)
        written = new.model_copy(update={"revision": seen.revision + 1, "updated_at": utcnow()})
        metadata = await producer.publish(view.topic, seen.id, written)
        await view.wait_for(metadata.partition, metadata.offset)
    report.rotated_channels.append(seen.id)
    report.rotated_secrets += count
