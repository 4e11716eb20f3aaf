"""The reference campaign service against real Kafka, as a process killed mid-stream."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING

import pytest

from campaign_autoreply.answer import PURPOSE
from email_channels.codec import decode
from email_channels.consume import make_consumer
from email_channels.events import (
    Address,
    EmailFlags,
    OutboundEmail,
    RoutedEmail,
    RoutingReason,
    SourceIdentity,
)
from email_channels.headers import CAMPAIGN_HEADER
from email_channels.producer import EventProducer
from email_channels_contracts import outbound_id_for

if TYPE_CHECKING:
    from pathlib import Path

    from email_channels.settings import KafkaSettings

pytestmark = pytest.mark.integration

EMAILS = 300


def _routed(i: int, campaign: str, *, auto_reply: bool = False) -> RoutedEmail:
    return RoutedEmail.model_validate(
        {
            "email_id": f"e-{i}",
            "channel_id": "ch-1",
            "campaign_id": campaign,
            "reason": RoutingReason(kind="default"),
            "conversation_id": f"conv-{i % 17}",
            "message_id": f"<m{i}@customer.example>",
            "from": Address(address=f"c{i}@customer.example"),
            "subject": f"Question {i}",
            "source": SourceIdentity(protocol="pop3", uidl=f"u{i}"),
            "flags": EmailFlags(auto_reply=auto_reply),
        }
    )


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


async def _start(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    handle = log.open("ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "campaign_autoreply", env=env, stdout=handle, stderr=handle
    )
    handle.close()
    for _ in range(300):
        if "campaign autoreply ready" in _text(log):
            return process
        assert process.returncode is None, _text(log)
        await asyncio.sleep(0.1)
    raise AssertionError("the service did not become ready:\n" + _text(log))


async def _outbound(kafka_settings: KafkaSettings, until: int) -> list[OutboundEmail]:
    """Everything committed on email.outbound (read_committed), once ``until`` records came."""
    consumer = make_consumer(
        kafka_settings, kafka_settings.topics.outbound, group_id=None, client_id="t-outbound"
    )
    await consumer.start()
    found: list[OutboundEmail] = []
    try:
        idle = 0
        while idle < 6:  # 3 s without a new record after reaching `until`
            batches = await consumer.getmany(timeout_ms=500)
            records = [r for rs in batches.values() for r in rs]
            found.extend(decode(OutboundEmail, r.value) for r in records)
            idle = idle + 1 if (not records and len(found) >= until) else 0
    finally:
        await consumer.stop()
    return found


async def test_each_routed_email_is_answered_exactly_once_across_a_kill(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """kill -9 mid-stream and a restart: every answerable email has exactly one committed reply,
    other campaigns' records and auto-replies none."""
    topics = kafka_settings.topics
    async with EventProducer(kafka_settings, client_id="t-router") as producer:
        for i in range(EMAILS):
            campaign = "billing" if i % 10 == 0 else "support"
            email = _routed(i, campaign, auto_reply=i % 10 == 5)
            await producer.raw.send(
                topics.routed,
                key=email.conversation_id.encode(),
                value=email.model_dump_json(by_alias=True).encode(),
                headers=[(CAMPAIGN_HEADER, campaign.encode())],
            )
        await producer.raw.flush()
    expected = {outbound_id_for(f"e-{i}", PURPOSE) for i in range(EMAILS) if i % 10 not in {0, 5}}

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "AUTOREPLY_CAMPAIGN_ID": "support",
        "AUTOREPLY_MAX_BATCH": "20",
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
    }
    log = tmp_path / "autoreply.log"
    first = await _start(env, log)
    for _ in range(200):  # kill it once it has answered some, but not all
        if _text(log).count('"answered"') >= 40:
            break
        await asyncio.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    answered_before = _text(log).count('"answered"')
    assert 0 < answered_before < len(expected), "the kill did not land mid-stream"

    second = await _start(env, log)
    try:
        replies = await _outbound(kafka_settings, until=len(expected))
    finally:
        second.send_signal(signal.SIGTERM)
        assert await second.wait() == 0
    ids = [reply.outbound_id for reply in replies]
    assert len(ids) == len(set(ids)), "a reply was committed twice"
    assert set(ids) == expected
