"""Router throughput with exactly-once on, against a bare aiokafka pass-through (same run).

For 25 KB and 2 KB mail: N RawEmail records (inline MIME, six channels as keys) are put
on email.raw first (gzip, as the fetcher's producer writes them); then

- **router**: ``python -m router`` (transactions per batch, marks, a fresh blob store on local
  disk) routes them; the rate is taken between the first and the last routed record a
  read_committed reader sees;
- **router x2**: two ``python -m router`` processes in one consumer group (each its own
  instance id; the 3 partitions split 2:1), as replicas scale in production; 2N records,
  counted once the group is stable (the second member's join costs a rebalance first);
- **pass-through**: this script in ``--pass-through`` mode, a bare aiokafka consumer ->
  transactional producer copying the same records to another topic, one transaction per
  batch with ``send_offsets_to_transaction`` (the ceiling of consume -> produce here).

All run as child processes with the same batch size and compression (the router's default,
or ``ROUTER_COMPRESSION``). Bounded: N records and a time limit per measurement. Set
KAFKA_BOOTSTRAP_SERVERS to use an existing broker. ``BENCH_SCALE=0.5`` halves N,
``BENCH_ROUTER_SIZES=2000`` runs one size. ``BENCH_ROUTER_PROFILE=path`` runs the single
router under cProfile (CPU time; one file per mail size, ``path.<size>``, read with
``python -m pstats``); cProfile charges a call that releases the GIL (hashing, compression)
with the CPU other threads use meanwhile (the blob writer), so check with py-spy.
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
from aiokafka.errors import KafkaError
from child_process import cpu_seconds, service_command

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


def corpus(size: int, count: int) -> tuple[int, list[tuple[bytes, bytes]]]:
    """(mail size, ``count`` RawEmail records (key, value) of about ``size`` bytes), built
    before any child starts so that building them does not load the machine meanwhile."""
    records, mime_size = [], 0
    for n in range(count):
        mime = corpus_mail(n, size)
        mime_size = len(mime)
        raw = RawEmail(
            email_id=f"e-{n}",
            channel_id=CHANNELS[n % len(CHANNELS)],
            source=SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=1, uid=n + 1),
            size=len(mime),
            sha256=hashlib.sha256(mime).hexdigest(),
            raw_mime=mime,
        )
        records.append((raw.channel_id.encode(), raw.model_dump_json().encode()))
    return mime_size, records


CHANNELS = [f"ch-{n}" for n in range(PARTITIONS * 2)]


async def configure(settings: KafkaSettings) -> None:
    """The channels the corpus names."""
    async with EventProducer(settings, client_id="bench-config") as producer:
        for channel_id in CHANNELS:
            channel = ChannelConfig(id=channel_id, name=channel_id, default_campaign_id="c")
            await producer.publish(settings.topics.channels, channel_id, channel)


async def feed(settings: KafkaSettings, records: list[tuple[bytes, bytes]]) -> None:
    """Put the records on email.raw."""
    async with EventProducer(settings, client_id="bench-feed") as producer:
        pending = []
        for key, value in records:
            pending.append(await producer.raw.send(settings.topics.raw, key=key, value=value))
            if len(pending) >= FEED_CHUNK:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)


async def group_ready(settings: KafkaSettings, group: str, members: int) -> None:
    """Wait until every child joined ``group`` (Stable, ``members`` members): the records come
    only then, so a second router joining late does not rebalance the group mid-run."""
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    await admin.start()
    try:
        deadline = time.monotonic() + TIME_LIMIT_S
        while time.monotonic() < deadline:
            try:
                responses = await admin.describe_consumer_groups([group])
            except KafkaError as exc:  # e.g. the coordinator is only just being elected
                if not exc.retriable:
                    raise
                responses = []
            for response in responses:
                # each group a tuple: its state at [2], its members at [5] (DescribeGroups)
                if any(g[2] == "Stable" and len(g[5]) == members for g in response.groups):
                    return
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    raise RuntimeError(f"group {group} did not reach {members} members in {TIME_LIMIT_S}s")


async def rate_on(
    settings: KafkaSettings,
    topic: str,
    count: int,
    children: list[subprocess.Popen[bytes]],
    ready: asyncio.Task[None],
) -> tuple[float, float]:
    """Records/s on ``topic`` from the first committed transaction seen once the children's
    group is ``ready`` to the last record, and records per CPU-second of the children
    (together) over the same span (less noisy on a busy machine).

    Committed records become visible a transaction at a time: what is seen until the group is
    ready and the first burst after it are not counted, so start-up (config, group join, and
    with two routers the rebalance when the second joins) is not in the figure.
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
    seen, not_counted, first, last = 0, 0, 0.0, 0.0
    cpu_first = cpu_last = 0.0
    counting = False
    deadline = time.monotonic() + TIME_LIMIT_S
    try:
        while seen < count and time.monotonic() < deadline:
            for child in children:
                if child.poll() is not None:
                    raise RuntimeError(f"child exited with {child.returncode}")
            got = sum(len(r) for r in (await consumer.getmany(timeout_ms=50)).values())
            if not got:
                continue
            seen += got
            if not counting:
                if ready.done():
                    ready.result()  # its failure, if any
                    counting, not_counted, first = True, seen, time.monotonic()
                    cpu_first = sum(cpu_seconds(child.pid) for child in children)
                continue
            last = time.monotonic()
            cpu_last = sum(cpu_seconds(child.pid) for child in children)
    finally:
        await consumer.stop()
    if seen < count:
        raise RuntimeError(f"only {seen} of {count} records within {TIME_LIMIT_S}s")
    if last <= first:
        raise RuntimeError(f"all {count} records came before the group was ready: use more")
    counted = seen - not_counted
    return counted / (last - first), counted / max(cpu_last - cpu_first, 1e-9)


def router_command(size: int, *, profiled: bool = True) -> list[str]:
    """``python -m router``, under cProfile when ``BENCH_ROUTER_PROFILE`` names a file.

    CPU time, not wall time: on a loaded machine wall time shows the scheduler. The child is
    stopped with SIGTERM, which the router turns into a clean stop, so the profile is written.
    """
    profile = os.environ.get("BENCH_ROUTER_PROFILE")
    return service_command("router", f"{profile}.{size}" if profile and profiled else None)


def child_env(settings: KafkaSettings, blobs: Path, instance: str = "bench") -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "KAFKA_PARTITIONS": str(PARTITIONS),
        "EMAIL_CHANNELS_BLOB_STORE_URL": os.environ.get("BENCH_BLOB_STORE_URL", f"file://{blobs}"),
        "EMAIL_CHANNELS_LOG_LEVEL": "warning",
        "ROUTER_BATCH_MAX_RECORDS": str(BATCH),
        "ROUTER_INSTANCE_ID": instance,
        "ROUTER_COMPRESSION": COMPRESSION,
    }


MODES = ("router", "router x2", "pass-through")
"""One router process; two (one consumer group, the partitions split 2:1, as replicas in
production); the pass-through peer."""


async def measure(
    bootstrap: str, size: int, count: int, workdir: Path
) -> tuple[int, dict[str, tuple[float, float]]]:
    """(mail size, {mode: (msg/s, msg per CPU-second)}) for each of :data:`MODES`."""
    rates: dict[str, tuple[float, float]] = {}
    mime_size = 0
    for mode in MODES:
        settings = KafkaSettings(
            bootstrap_servers=bootstrap,
            topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.",
            partitions=PARTITIONS,
        )
        await ensure_topics(settings)
        # two routers: twice the records, as the second one's join costs a rebalance first
        mime_size, records = corpus(size, count * (2 if mode == "router x2" else 1))
        await configure(settings)
        await feed(settings, records)
        blobs = workdir / "blobs"
        group = RouterSettings(kafka=settings).app_id
        topic = settings.topics.routed
        if mode == "pass-through":
            commands = [([sys.executable, __file__, "--pass-through"], child_env(settings, blobs))]
            topic = f"{settings.topic_prefix}bench.pass-through"
            group = f"{settings.topic_prefix}bench-pass-through"
            admin = AIOKafkaAdminClient(**settings.client_kwargs())
            await admin.start()
            try:
                await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
            finally:
                await admin.close()
        elif mode == "router":
            commands = [(router_command(size), child_env(settings, blobs))]
        else:
            commands = [
                (router_command(size, profiled=False), child_env(settings, blobs, f"bench-{n}"))
                for n in (1, 2)
            ]
        logs = [(workdir / f"{mode}-{size}-{n}.log").open("wb") for n in range(len(commands))]
        children = [
            subprocess.Popen(command, env=env, stdout=log, stderr=log)
            for (command, env), log in zip(commands, logs, strict=True)
        ]
        ready = asyncio.create_task(group_ready(settings, group, len(children)))
        try:
            rates[mode] = await rate_on(settings, topic, len(records), children, ready)
        finally:
            ready.cancel()
            for child in children:
                child.terminate()
            for child in children:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=30)
                if child.poll() is None:
                    child.kill()
            for log in logs:
                log.close()
    return mime_size, rates


async def pass_through() -> None:
    """consume email.raw -> produce the same records, one transaction per batch."""
    settings = KafkaSettings()
    topics = settings.topics
    out = f"{settings.topic_prefix}bench.pass-through"
    group = f"{settings.topic_prefix}bench-pass-through"  # as group_ready() expects
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
    rows: list[tuple[int, int, int, dict[str, tuple[float, float]]]] = []
    with running_kafka() as kafka, tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        for size, count in SIZES:
            mime_size, rates = await measure(kafka.bootstrap_servers, size, count, Path(tmp))
            rows.append((size, count, mime_size, rates))
    print(
        f"\nrouter vs bare aiokafka pass-through, exactly-once (one transaction per batch "
        f"of {BATCH}), compression {COMPRESSION}, {PARTITIONS} partitions, "
        f"{os.cpu_count()} CPUs; 'x2': two router processes in one group (CPU of both)"
    )
    print(
        f"{'mail':>8} {'records':>8} {'routers':>8} {'router msg/s':>13} "
        f"{'pass-through msg/s':>19} {'ratio':>6} {'router msg/CPU-s':>17} "
        f"{'pass msg/CPU-s':>15} {'target':>15}"
    )
    for size, count, mime_size, rates in rows:
        target = 2_000 if size >= LARGE else 5_000
        bare, bare_cpu = rates["pass-through"]
        for mode, processes in (("router", 1), ("router x2", 2)):
            ours, ours_cpu = rates[mode]
            records = count * processes
            print(
                f"{mime_size:>7}B {records:>8} {processes:>8} {ours:>13.0f} {bare:>19.0f} "
                f"{ours / bare:>6.2f} {ours_cpu:>17.0f} {bare_cpu:>15.0f} "
                f"{f'>={target}, >=0.5x':>15}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pass-through", action="store_true", help="run as the peer (child)")
    if parser.parse_args().pass_through:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(pass_through())
    else:
        asyncio.run(main())
