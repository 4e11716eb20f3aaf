"""Never sent twice, never silently dropped: the sender killed with SIGKILL mid-stream.

Real processes: ``python -m sender`` is started, killed with SIGKILL while it is sending, and
started again, several times; a last instance finishes the stream. Real Kafka, a real SMTP
server (aiosmtpd with STARTTLS and AUTH, in this test process, so it outlives every kill).

What is counted, at the SMTP server and on email.delivery:

- 0 duplicates: no Message-ID arrives twice;
- 0 lost: every outbound id has exactly one final status (sent, unknown, failed, rejected);
- ``sent`` means it arrived; whatever arrived is ``sent`` or ``unknown`` (an intent whose
  outcome the killed process never reported).

The short version (200 outbound, two kills) runs with the integration tests; the
full one (3,000 outbound, 20 kills) is ``make chaos`` (the chaos marker keeps it out of
``make test``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer

from email_channels.codec import decode
from email_channels.events import (
    ChannelConfig,
    DeliveryEvent,
    DeliveryStatus,
    OutboundEmail,
    SmtpOutbound,
    TlsMode,
)
from email_channels.producer import EventProducer

if TYPE_CHECKING:
    from pathlib import Path

    from devstack.smtp import SmtpServer
    from email_channels.settings import KafkaSettings

pytestmark = pytest.mark.integration


class Outcomes:
    """Every email.delivery event of the test, as it arrives."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._consumer = AIOKafkaConsumer(
            settings.topics.delivery,
            **settings.client_kwargs(),
            group_id=None,
            auto_offset_reset="earliest",
        )
        self.events: list[DeliveryEvent] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def _run(self) -> None:
        async for record in self._consumer:
            self.events.append(decode(DeliveryEvent, record.value))

    def finals(self) -> dict[str, list[DeliveryStatus]]:
        result: dict[str, list[DeliveryStatus]] = collections.defaultdict(list)
        for event in self.events:
            if event.status.final:
                result[event.outbound_id].append(event.status)
        return result


def _start_sender(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "sender"], env=env, stdout=out, stderr=out)


async def _kill_mid_stream(
    env: dict[str, str],
    log: Path,
    smtp_server: SmtpServer,
    tag: str,
    *,
    count: int,
    kills: int,
    rng: random.Random,
) -> None:
    """Start, let it send a little, SIGKILL; ``kills`` times (or until all are through)."""

    def arrived() -> int:
        return sum(1 for m in smtp_server.messages if any(tag in r for r in m.rcpt_tos))

    for _ in range(kills):
        if arrived() >= count:
            return
        process = _start_sender(env, log)
        try:
            before = arrived()
            step = rng.randint(max(1, count // (kills * 4)), max(2, count // (kills * 2)))
            for _tick in range(600):  # up to 60 s for this instance to make progress
                if arrived() >= min(count, before + step) or process.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(rng.uniform(0, 0.05))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()


async def run_kill_scenario(
    *,
    kafka_settings: KafkaSettings,
    smtp_server: SmtpServer,
    secret_box: Any,
    secret_keys: str,
    pki: Any,
    tmp_path: Path,
    count: int,
    kills: int,
    timeout_s: float,
) -> tuple[Outcomes, list[str], dict[str, int]]:
    tag = f"kill{uuid.uuid4().hex[:6]}"
    channel = ChannelConfig(
        id=f"ch-{uuid.uuid4().hex[:8]}",
        name="Support",
        email_address="support@shop.example",
        default_campaign_id="camp-1",
        enabled=True,
        outbound=SmtpOutbound(
            host=smtp_server.host,
            port=smtp_server.port,
            tls=TlsMode.STARTTLS,
            username="sender",
            password=secret_box.encrypt("sender-secret"),
        ),
    )
    ids = [f"{tag}-{index}" for index in range(count)]
    async with EventProducer(kafka_settings, client_id="kill-test") as producer:
        await producer.publish(kafka_settings.topics.channels, channel.id, channel)
        sends = [
            producer.publish(
                kafka_settings.topics.outbound,
                f"conv-{index % 50}",
                OutboundEmail.model_validate(
                    {
                        "outbound_id": outbound_id,
                        "channel_id": channel.id,
                        "conversation_id": f"conv-{index % 50}",
                        "to": [{"address": f"{outbound_id}@customer.example"}],
                        "subject": f"Re: order {index}",
                        "text_body": "Your parcel is on its way.\n" * 40,
                    }
                ),
            )
            for index, outbound_id in enumerate(ids)
        ]
        await asyncio.gather(*sends)

    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "EMAIL_CHANNELS_SECRET_KEYS": secret_keys,
        "EMAIL_CHANNELS_ALLOWED_HOSTS": "127.0.0.1",
        "EMAIL_CHANNELS_CA_FILE": str(pki.ca_cert),
        "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{tmp_path}/blobs",
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
        "SENDER_GROUP_SESSION_TIMEOUT_S": "6",
        "SENDER_RETRY_DELAYS_S": "[1, 2]",
        "SENDER_POOL_MAX_ADMITTED": "8",  # at most 8 intents open at a kill: few unknowns
    }
    log = tmp_path / "sender.log"
    outcomes = Outcomes(kafka_settings)
    await outcomes.start()
    try:
        await _kill_mid_stream(
            env, log, smtp_server, tag, count=count, kills=kills, rng=random.Random(count)
        )
        final = _start_sender(env, log)
        try:
            for _tick in range(int(timeout_s * 10)):
                if len(outcomes.finals()) >= count:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(2)  # a second final status, if any, would show up now
        finally:
            final.send_signal(signal.SIGTERM)
            try:
                final.wait(timeout=30)
            except subprocess.TimeoutExpired:
                final.kill()
    finally:
        await outcomes.stop()
    arrived = collections.Counter(
        str(m.message()["Message-ID"])
        for m in smtp_server.messages
        if any(tag in r for r in m.rcpt_tos)
    )
    return outcomes, ids, dict(arrived)


def check(outcomes: Outcomes, ids: list[str], arrived: dict[str, int]) -> dict[str, int]:
    """The guarantees; returns the count of each final status."""
    duplicates = {mid: n for mid, n in arrived.items() if n > 1}
    assert duplicates == {}, f"{len(duplicates)} Message-IDs arrived more than once"
    finals = outcomes.finals()
    missing = [i for i in ids if i not in finals]
    assert missing == [], f"{len(missing)} outbound ids without a final status: {missing[:5]}"
    doubled = {i: s for i, s in finals.items() if len(s) != 1}
    assert doubled == {}, f"outbound ids with more than one final status: {doubled}"
    sent_ids = {e.message_id for e in outcomes.events if e.status is DeliveryStatus.SENT}
    assert sent_ids <= set(arrived), "a 'sent' outbound never arrived"
    unknown = {e.outbound_id for e in outcomes.events if e.status is DeliveryStatus.UNKNOWN}
    reported = len(sent_ids) + len(unknown)
    assert len(arrived) <= reported, "something arrived that is neither sent nor unknown"
    return collections.Counter(s[0].value for s in finals.values())


async def test_sigkill_mid_stream_sends_nothing_twice_and_loses_nothing(
    kafka_settings, smtp_server, secret_box, secret_keys, pki, tmp_path
):
    """Short version: 200 outbound, 2 kills with SIGKILL while sending."""
    outcomes, ids, arrived = await run_kill_scenario(
        kafka_settings=kafka_settings,
        smtp_server=smtp_server,
        secret_box=secret_box,
        secret_keys=secret_keys,
        pki=pki,
        tmp_path=tmp_path,
        count=200,
        kills=2,
        timeout_s=120,
    )
    statuses = check(outcomes, ids, arrived)
    print(f"final statuses after 2 kills: {dict(statuses)}")  # noqa: T201
    assert statuses["sent"] >= 180  # unknown only for the few admitted messages at each kill


@pytest.mark.chaos
async def test_twenty_sigkills_over_three_thousand_outbound(
    kafka_settings, smtp_server, secret_box, secret_keys, pki, tmp_path
):
    """Full version: 3,000 outbound, 20 kills with SIGKILL while sending."""
    outcomes, ids, arrived = await run_kill_scenario(
        kafka_settings=kafka_settings,
        smtp_server=smtp_server,
        secret_box=secret_box,
        secret_keys=secret_keys,
        pki=pki,
        tmp_path=tmp_path,
        count=3000,
        kills=20,
        timeout_s=600,
    )
    statuses = check(outcomes, ids, arrived)
    print(f"final statuses after 20 kills: {dict(statuses)}")  # noqa: T201
