"""Router throughput with exactly-once on, against a bare aiokafka pass-through (same run).

For 25 KB and 2 KB mail: N RawEmail records (inline MIME, one channel per partition) are put on
email.raw first; then

- **router**: ``python -m router`` (transactions per batch, marks, blob store on local disk)
  routes them; the rate is taken between the first and the last routed record a
  read_committed reader sees;
- **pass-through**: this script in ``--pass-through`` mode, a bare aiokafka consumer ->
  transactional producer copying the same records to another topic, one transaction per
  batch with ``send_offsets_to_transaction`` (the ceiling of consume -> produce here).

Both run as child processes with the same batch size and compression. Bounded: N records and
a time limit per measurement. Set KAFKA_BOOTSTRAP_SERVERS to use an existing broker.
``BENCH_ROUTER_PROFILE=path`` runs the router under cProfile (CPU time): one file per mail
size, ``path.<size>`` (read with ``python -m pstats``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack.kafka import running_kafka
from email_channels.admin import ensure_topics
from email_channels.events import ChannelConfig, RawEmail, SourceIdentity
from email_channels.producer import EventProducer
from email_channels.settings import KafkaSettings
from router.app import MAX_BATCH_BYTES
from router.settings import RouterSettings

PARTITIONS = 3
BATCH = 500
TIME_LIMIT_S = 180.0
FEED_CHUNK = 1000
LARGE = 25_000
SCALE = float(os.environ.get("BENCH_SCALE", "1"))  # e.g. 0.1 for a quick smoke run
SIZES = tuple(  # (mail bytes, records); BENCH_ROUTER_SIZES=2000 runs one size
    (size, int(records * SCALE))
    for size, records in ((25_000, 4_000), (2_000, 10_000))
    if str(size) in os.environ.get("BENCH_ROUTER_SIZES", "25000,2000").split(",")
)
COMPRESSION = os.environ.get(  # both sides alike; the router's default unless set
    "ROUTER_COMPRESSION", RouterSettings.model_fields["compression"].default
)
PARAGRAPH = (
    "Hello, I ordered a blue kettle three weeks ago and it has not arrived yet. Could you "
    "please tell me where it is? The order number is in the subject. Kind regards.\n"
)


def corpus_mail(n: int, size: int) -> bytes:
    message = EmailMessage()
    message["From"] = f"Customer {n} <c{n}@customer.example>"
    message["To"] = "support@shop.example"
    message["Subject"] = f"Order {n} has not arrived"
    message["Message-ID"] = f"<bench-{n}-{uuid.uuid4().hex}@customer.example>"
    message["Date"] = "Mon, 30 Nov 2026 10:00:00 +0000"
    body = PARAGRAPH * max(1, (size - 600) // (2 * len(PARAGRAPH)))
    message.set_content(body)
    message.add_alternative(f"<html><body><p>{body}</p></body></html>", subtype="html")
    return message.as_bytes()


async def feed(settings: KafkaSettings, size: int, count: int) -> int:
    """Channels and ``count`` RawEmail records of about ``size`` bytes; returns the mail size."""
    topics = settings.topics
    channels = [f"ch-{n}" for n in range(PARTITIONS * 2)]
    mime_size = 0
    async with EventProducer(settings, client_id="bench-feed") as producer:
        for channel_id in channels:
            channel = ChannelConfig(id=channel_id, name=channel_id, default_campaign_id="c")
            await producer.publish(topics.channels, channel_id, channel)
        pending = []
        for n in range(count):
            mime = corpus_mail(n, size)
            mime_size = len(mime)
            raw = RawEmail(
                email_id=f"e-{n}",
                channel_id=channels[n % len(channels)],
                source=SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=1, uid=n + 1),
                size=len(mime),
                sha256=hashlib.sha256(mime).hexdigest(),
                raw_mime=mime,
            )
            pending.append(
                await producer.raw.send(
                    topics.raw, key=raw.channel_id.encode(), value=raw.model_dump_json().encode()
                )
            )
            if len(pending) >= FEED_CHUNK:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    return mime_size


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rate_on(
    settings: KafkaSettings, topic: str, count: int, child: subprocess.Popen[bytes]
) -> tuple[float, float]:
    """Records/s on ``topic`` from the first committed transaction seen to the last record,
    and records per CPU-second of the child over the same span (less noisy on a busy machine).

    Committed records become visible a transaction at a time: the first burst marks the start
    and is not counted, so start-up (config, group join) is not in the figure.
    """
    consumer = AIOKafkaConsumer(
        topic,
        **settings.client_kwargs(),
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    seen, first_burst, first, last = 0, 0, 0.0, 0.0
    cpu_first = cpu_last = 0.0
    deadline = time.monotonic() + TIME_LIMIT_S
    try:
        while seen < count and time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"child exited with {child.returncode}")
            got = sum(len(r) for r in (await consumer.getmany(timeout_ms=50)).values())
            if not got:
                continue
            if not seen:
                first, first_burst = time.monotonic(), got
                cpu_first = cpu_seconds(child.pid)
            seen += got
            last = time.monotonic()
            cpu_last = cpu_seconds(child.pid)
    finally:
        await consumer.stop()
    if seen < count:
        raise RuntimeError(f"only {seen} of {count} records within {TIME_LIMIT_S}s")
    if last <= first:
        raise RuntimeError(f"all {count} records came in one burst: use more records")
    counted = seen - first_burst
    return counted / (last - first), counted / max(cpu_last - cpu_first, 1e-9)


_PROFILED = """
import cProfile, runpy, time
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    runpy.run_module("router", run_name="__main__")
finally:
    profile.disable()
    profile.dump_stats({path!r})
"""


def router_command(size: int) -> list[str]:
    """``python -m router``, under cProfile when ``BENCH_ROUTER_PROFILE`` names a file.

    CPU time, not wall time: on a loaded machine wall time shows the scheduler. The child is
    stopped with SIGTERM, which the router turns into a clean stop, so the profile is written.
    """
    profile = os.environ.get("BENCH_ROUTER_PROFILE")
    if not profile:
        return [sys.executable, "-m", "router"]
    return [sys.executable, "-c", _PROFILED.format(path=f"{profile}.{size}")]


def child_env(settings: KafkaSettings, blobs: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "KAFKA_PARTITIONS": str(PARTITIONS),
        "EMAIL_CHANNELS_BLOB_STORE_URL": os.environ.get("BENCH_BLOB_STORE_URL", f"file://{blobs}"),
        "EMAIL_CHANNELS_LOG_LEVEL": "warning",
        "ROUTER_BATCH_MAX_RECORDS": str(BATCH),
        "ROUTER_INSTANCE_ID": "bench",
        "ROUTER_COMPRESSION": COMPRESSION,
    }


async def measure(
    bootstrap: str, size: int, count: int, workdir: Path
) -> tuple[int, tuple[float, float], tuple[float, float]]:
    rates: list[tuple[float, float]] = []
    for mode in ("router", "pass-through"):
        settings = KafkaSettings(
            bootstrap_servers=bootstrap,
            topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.",
            partitions=PARTITIONS,
        )
        await ensure_topics(settings)
        mime_size = await feed(settings, size, count)
        command = router_command(size)
        topic = settings.topics.routed
        if mode == "pass-through":
            command = [sys.executable, __file__, "--pass-through"]
            topic = f"{settings.topic_prefix}bench.pass-through"
            admin = AIOKafkaAdminClient(**settings.client_kwargs())
            await admin.start()
            try:
                await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
            finally:
                await admin.close()
        log = (workdir / f"{mode}-{size}.log").open("wb")
        child = subprocess.Popen(
            command, env=child_env(settings, workdir / "blobs"), stdout=log, stderr=log
        )
        try:
            rates.append(await rate_on(settings, topic, count, child))
        finally:
            child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=30)
            if child.poll() is None:
                child.kill()
            log.close()
    return mime_size, rates[0], rates[1]


async def pass_through() -> None:
    """consume email.raw -> produce the same records, one transaction per batch."""
    settings = KafkaSettings()
    topics = settings.topics
    out = f"{settings.topic_prefix}bench.pass-through"
    group = f"{settings.topic_prefix}bench-pass-through"
    consumer = AIOKafkaConsumer(
        topics.raw,
        **settings.client_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        **settings.client_kwargs(),
        transactional_id=group,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=MAX_BATCH_BYTES,  # the router's producer settings, for a fair ceiling
        max_request_size=2 * 1024 * 1024,
        compression_type=None if COMPRESSION == "none" else COMPRESSION,
    )
    await producer.start()
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            if not batches:
                continue
            await producer.begin_transaction()
            sent = [
                await producer.send(out, key=record.key, value=record.value)
                for records in batches.values()
                for record in records
            ]
            await asyncio.gather(*sent)
            await producer.send_offsets_to_transaction(
                {tp: records[-1].offset + 1 for tp, records in batches.items()}, group
            )
            await producer.commit_transaction()
    finally:
        await consumer.stop()
        await producer.stop()


async def main() -> None:
    rows: list[tuple[int, int, int, tuple[float, float], tuple[float, float]]] = []
    with running_kafka() as kafka, tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        for size, count in SIZES:
            mime_size, router, peer = await measure(kafka.bootstrap_servers, size, count, Path(tmp))
            rows.append((size, count, mime_size, router, peer))
    print(
        f"\nrouter vs bare aiokafka pass-through, exactly-once (one transaction per batch "
        f"of {BATCH}), compression {COMPRESSION}, {PARTITIONS} partitions, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"{'mail':>8} {'records':>8} {'router msg/s':>13} {'pass-through msg/s':>19} "
        f"{'ratio':>6} {'router msg/CPU-s':>17} {'pass msg/CPU-s':>15} {'target':>15}"
    )
    for size, count, mime_size, (ours, ours_cpu), (bare, bare_cpu) in rows:
        target = 2_000 if size >= LARGE else 5_000
        print(
            f"{mime_size:>7}B {count:>8} {ours:>13.0f} {bare:>19.0f} {ours / bare:>6.2f} "
            f"{ours_cpu:>17.0f} {bare_cpu:>15.0f} {f'>={target}, >=0.5x':>15}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pass-through", action="store_true", help="run as the peer (child)")
    if parser.parse_args().pass_through:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(pass_through())
    else:
        asyncio.run(main())
