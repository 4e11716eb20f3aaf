"""Sender throughput: 3,000 x 5 KB email.outbound -> SMTP sink, against a plain smtplib loop.

Everything runs on this machine over loopback, against two sinks in the same run:

- **aiosmtpd**: the project's Python SMTP server in its own process (this script with
  ``--sink``), plain SMTP, no AUTH, counting messages and duplicate Message-IDs;
- **smtp-sink**: Postfix's C test server (Debian package ``postfix``; ``make bench`` installs
  it without configuring an MTA), on a loopback port, dumping what it takes to a file that is
  counted afterwards. It advertises PIPELINING; it does not become the bottleneck the way one
  Python process does on 2 cores.

For each sink:

- **peer**: one ``smtplib.SMTP`` connection sending the same number of pre-built messages in a
  loop (MAIL/RCPT/DATA each), timed from the first MAIL to the last reply;
- **ours**: ``python -m sender`` as a process, the records already on email.outbound (a real
  Kafka broker: devstack, or KAFKA_BOOTSTRAP_SERVERS); timed from its first intent
  (``sending``) to its last ``sent`` on email.delivery (Kafka consumption, compose, header
  checks, intent, SMTP, delivery events all included). Its CPU per message is read from
  /proc between its first and last event.

Bounded: 3,000 messages each (``--count``), a 300 s ceiling per run. Prints one table with the
ratios. ``BENCH_SENDER_LOG=path`` keeps the sender's log; ``BENCH_SENDER_PROFILE=path`` runs it
under cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from child_process import cpu_split, machine_busy_seconds, service_command

CEILING_S = float(os.environ.get("BENCH_SENDER_CEILING_S", "300"))
PUBLISH_BATCH = 500
BODY_BYTES = 5 * 1024
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


# --- the sink (a separate process) ------------------------------------------------------------


def run_sink(port_file: Path) -> None:
    """aiosmtpd on 127.0.0.1:0; writes its port, prints a JSON summary on SIGTERM."""
    from aiosmtpd.controller import Controller  # noqa: PLC0415 - only in the sink process

    counts: dict[str, int] = {"messages": 0, "duplicates": 0}
    seen: set[bytes] = set()

    class Handler:
        async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
            counts["messages"] += 1
            match = _MESSAGE_ID.search(envelope.original_content or b"")
            if match is not None:
                if match.group(1) in seen:
                    counts["duplicates"] += 1
                seen.add(match.group(1))
            return "250 2.0.0 Ok: queued"

    class PortZeroController(Controller):  # learns the port the kernel chose (as devstack's)
        def _trigger_server(self) -> None:
            self.port = self.server.sockets[0].getsockname()[1]
            super()._trigger_server()  # type: ignore[no-untyped-call]

    controller = PortZeroController(Handler(), hostname="127.0.0.1", port=0)
    controller.start()
    port = controller.port
    port_file.write_text(str(port))
    stop = {"now": False}

    def _stop(_signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    while not stop["now"]:
        time.sleep(0.1)
    controller.stop()
    print(json.dumps(counts), flush=True)  # the summary is the sink's output


class Sink:
    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        port_file = Path(self._dir.name) / "port"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--sink", str(port_file)], stdout=subprocess.PIPE
        )
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("sink did not start")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def stop(self) -> dict[str, int]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        self._dir.cleanup()
        return json.loads(out.decode().strip().splitlines()[-1])


SMTP_SINK = Path("/usr/sbin/smtp-sink")


class PostfixSink:
    """Postfix's smtp-sink on 127.0.0.1:<free port>, every transaction appended to one file."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        Path(self._dir.name).chmod(0o777)  # smtp-sink drops to 'nobody' when started as root
        self._dump = Path(self._dir.name) / "dump"
        self.port = _free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen(
            [str(SMTP_SINK), *user, "-D", str(self._dump), f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("smtp-sink did not start") from None
                time.sleep(0.05)

    def stop(self) -> dict[str, int]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        ids = _MESSAGE_ID.findall(self._dump.read_bytes()) if self._dump.exists() else []
        self._dir.cleanup()
        return {"messages": len(ids), "duplicates": len(ids) - len(set(ids))}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the peer: smtplib on one connection --------------------------------------------------------


def peer_messages(count: int) -> list[tuple[str, str, bytes]]:
    body = ("x" * 75 + "\n") * (BODY_BYTES // 76)
    messages = []
    for index in range(count):
        message = EmailMessage()
        message["From"] = "support@shop.example"
        message["To"] = f"peer-{index}@customer.example"
        message["Subject"] = f"Re: order {index}"
        message["Message-ID"] = f"<peer-{index}-{uuid.uuid4().hex}@shop.example>"
        message.set_content(body)
        data = message.as_bytes(policy=email_policy.SMTP)
        messages.append(("support@shop.example", f"peer-{index}@customer.example", data))
    return messages


def run_peer(port: int, count: int) -> tuple[float, float]:
    """Seconds of the loop, and the machine's busy CPU seconds meanwhile (messages pre-built)."""
    messages = peer_messages(count)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        busy = machine_busy_seconds()
        started = time.perf_counter()
        for mail_from, to, data in messages:
            client.sendmail(mail_from, [to], data)
        return time.perf_counter() - started, machine_busy_seconds() - busy


# --- ours: the sender process -----------------------------------------------------------------


async def run_ours(
    bootstrap: str,
    sink_port: int,
    count: int,
    conversations: int,
    sessions: int,
    *,
    replicas: int = 1,
    ceiling: bool = False,
) -> dict[str, Any]:
    """``replicas`` sender processes in one group; ``ceiling``: the Kafka-only consumer instead."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415 - bench process only

    from email_channels.admin import ensure_topics  # noqa: PLC0415
    from email_channels.codec import decode  # noqa: PLC0415
    from email_channels.events import (  # noqa: PLC0415
        ChannelConfig,
        DeliveryEvent,
        DeliveryStatus,
        OutboundEmail,
        SmtpOutbound,
        TlsMode,
    )
    from email_channels.producer import EventProducer  # noqa: PLC0415
    from email_channels.secretbox import SecretBox  # noqa: PLC0415
    from email_channels.settings import KafkaSettings  # noqa: PLC0415

    run = uuid.uuid4().hex[:8]  # each run its own topics and outbound ids (so Message-IDs)
    prefix = f"bench-{run}."
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=6)
    topics = kafka.topics
    await ensure_topics(kafka)
    channel = ChannelConfig(
        id="ch-bench",
        name="Bench",
        email_address="support@shop.example",
        default_campaign_id="camp-1",
        enabled=True,
        outbound=SmtpOutbound(host="127.0.0.1", port=sink_port, tls=TlsMode.PLAIN),
    )
    body = ("x" * 75 + "\n") * (BODY_BYTES // 76)
    async with EventProducer(kafka, client_id="bench") as producer:
        await producer.publish(topics.channels, channel.id, channel)
        sends = []
        for index in range(count):
            outbound = OutboundEmail.model_validate(
                {
                    "outbound_id": f"bench-{run}-{index}",
                    "channel_id": channel.id,
                    "conversation_id": f"conv-{index % conversations}",
                    "to": [{"address": f"ours-{index}@customer.example"}],
                    "subject": f"Re: order {index}",
                    "text_body": body,
                }
            )
            key = outbound.conversation_id or outbound.outbound_id
            sends.append(producer.publish(topics.outbound, key, outbound))
            if len(sends) >= PUBLISH_BATCH:
                await asyncio.gather(*sends)
                sends = []
        await asyncio.gather(*sends)

    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "EMAIL_CHANNELS_SECRET_KEYS": f"bench:{SecretBox.generate_key()}",
        "EMAIL_CHANNELS_ALLOWED_HOSTS": "127.0.0.1",
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
        "SENDER_POOL_MAX_SESSIONS": str(sessions),
    }
    log_path = os.environ.get("BENCH_SENDER_LOG")
    started = [
        _start_sender(env, Path(log_path) if log_path and i == 0 else None, ceiling=ceiling)
        for i in range(replicas)
    ]
    try:
        events, cpu_s = await _collect_deliveries(
            AIOKafkaConsumer,
            kafka,
            topics.delivery,
            count=count,
            decode=decode,
            model=DeliveryEvent,
            pids=[process.pid for process, _log in started],
            alive=lambda: all(process.poll() is None for process, _log in started),
        )
    finally:
        for process, log in started:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
    intents = [e.at for e in events if e.status is DeliveryStatus.SENDING]
    sent = [e for e in events if e.status is DeliveryStatus.SENT]
    others = [e for e in events if e.status not in {DeliveryStatus.SENDING, DeliveryStatus.SENT}]
    span = (max(e.at for e in sent) - min(intents)).total_seconds()
    return {"seconds": span, "sent": len(sent), "other": len(others), "cpu_s": cpu_s}


def _start_sender(
    env: dict[str, str], log_path: Path | None, *, ceiling: bool = False
) -> tuple[subprocess.Popen[bytes], Any]:
    log = log_path.open("wb") if log_path else tempfile.TemporaryFile()  # noqa: SIM115 - closed by the caller
    profile = os.environ.get("BENCH_SENDER_PROFILE")  # cProfile output of the sender process
    command = service_command("sender", profile)
    if ceiling:
        command = [sys.executable, __file__, "--ceiling"]
    process = subprocess.Popen(command, env=env, stderr=log, stdout=log)
    return process, log


def _cpu_of(pids: list[int]) -> tuple[float, float, float]:
    """(user, system) CPU seconds of ``pids``, and the machine's busy seconds."""
    splits = [cpu_split(pid) for pid in pids]
    return sum(u for u, _ in splits), sum(s for _, s in splits), machine_busy_seconds()


async def _collect_deliveries(
    consumer_class: Any,
    kafka: Any,
    topic: str,
    *,
    count: int,
    decode: Any,
    model: Any,
    pids: list[int],
    alive: Any,
) -> tuple[list[Any], tuple[float, float, float]]:
    """Every delivery event until ``count`` are final; the (user, system) CPU seconds of the
    processes from the first to the last of them."""
    consumer = consumer_class(
        topic, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    events: list[Any] = []
    final = 0
    split_at_first: tuple[float, float, float] | None = None
    deadline = time.monotonic() + CEILING_S
    try:
        while final < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {final} of {count} outcomes within {CEILING_S}s")
            if not alive():
                raise RuntimeError(f"a measured process exited after {final} of {count} outcomes")
            batches = await consumer.getmany(timeout_ms=100)
            if batches and split_at_first is None:
                split_at_first = _cpu_of(pids)
            for records in batches.values():
                for record in records:
                    event = decode(model, record.value)
                    events.append(event)
                    final += event.status.final
        user, system, machine = _cpu_of(pids)
        first_user, first_system, first_machine = split_at_first or (0.0, 0.0, 0.0)
        cpu = (user - first_user, system - first_system, machine - first_machine)
    finally:
        await consumer.stop()
    return events, cpu


# --- the Kafka-only ceiling (a separate process, as the sender) --------------------------------


async def run_ceiling() -> None:
    """A bare aiokafka consumer of email.outbound producing two delivery-sized events per record.

    What the sender does with Kafka and nothing else: the same records consumed in a group
    (manual commits), per record the intent (``sending``) acknowledged before its outcome
    (``sent``), both real DeliveryEvent JSON of the same size, acks=all and idempotent, the
    sender's compression (SENDER_PRODUCER_COMPRESSION). No SMTP, no compose, no ledger: the
    upper bound of this design's Kafka side on this machine. Stops on SIGTERM.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: PLC0415

    from email_channels.events import DeliveryEvent, DeliveryStatus  # noqa: PLC0415
    from email_channels.settings import KafkaSettings  # noqa: PLC0415

    kafka = KafkaSettings()
    compression = os.environ.get("SENDER_PRODUCER_COMPRESSION", "none")
    consumer = AIOKafkaConsumer(
        kafka.topics.outbound,
        **kafka.client_kwargs(),
        group_id=f"{kafka.topic_prefix}ceiling",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        **kafka.client_kwargs(),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        compression_type=None if compression == "none" else compression,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.start()
    await producer.start()
    topic = kafka.topics.delivery

    def event(outbound: dict[str, Any], status: DeliveryStatus) -> bytes:
        return (
            DeliveryEvent(
                outbound_id=outbound["outbound_id"],
                channel_id=outbound["channel_id"],
                conversation_id=outbound.get("conversation_id"),
                status=status,
                transport="smtp",
                server_response="250 2.0.0 Ok: queued as 4F1A2B3C" if status.final else None,
                smtp_code=250 if status.final else None,
                message_id="<0123456789abcdef0123456789abcdef@shop.example>"
                if status.final
                else None,
            )
            .model_dump_json()
            .encode()
        )

    async def produce(outbounds: list[dict[str, Any]], status: DeliveryStatus) -> None:
        futures = [
            await producer.send(topic, event(o, status), key=o["outbound_id"].encode())
            for o in outbounds
        ]
        await asyncio.gather(*futures)

    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=256)
            outbounds = [json.loads(r.value) for rs in batches.values() for r in rs]
            if not outbounds:
                continue
            await produce(outbounds, DeliveryStatus.SENDING)  # the intents, acknowledged first
            await produce(outbounds, DeliveryStatus.SENT)
            await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


# --- the table --------------------------------------------------------------------------------


def _ours_row(name: str, what: str, ours: dict[str, Any], peer_rate: float) -> tuple[str, ...]:
    rate = ours["sent"] / ours["seconds"]
    sent = max(ours["sent"], 1)
    user, system, machine = ours["cpu_s"]
    return (
        name,
        what,
        str(ours["sent"]),
        f"{ours['seconds']:.2f}",
        f"{rate:.0f}",
        f"{1000 * (user + system) / sent:.2f} ({1000 * system / sent:.2f} sys)",
        f"{1000 * machine / sent:.2f}",
        f"{rate / peer_rate:.2f}x",
    )


def _print_table(
    rows: list[tuple[str, ...]], notes: list[str], count: int, load_before: float, load_after: float
) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"sender throughput, {count} x {BODY_BYTES // 1024} KB per run, loopback")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        "target: ours >= 3x the peer on the same sink. CPU: the measured process(es), user "
        "and system; machine: every core's busy time (broker, sink, this script, other work) "
        "per message, from the first to the last delivery event"
    )
    for note in notes:
        print(note)
    print(
        f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}, on "
        f"{os.cpu_count()} cores: a shared machine, other work may have loaded the CPU"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--conversations", type=int, default=300)
    parser.add_argument(
        "--sessions",
        default="4,16",
        help="SENDER_POOL_MAX_SESSIONS of each sender run, comma-separated (4: the default)",
    )
    parser.add_argument(
        "--sinks", default="aiosmtpd,smtp-sink", help="which sinks, comma-separated"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="also run this many sender processes in one group (16 sessions each; 1: skip)",
    )
    parser.add_argument("--sink", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ceiling", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink is not None:
        run_sink(args.sink)
        return 0
    if args.ceiling:
        asyncio.run(run_ceiling())
        return 0

    from devstack.kafka import running_kafka  # noqa: PLC0415

    wanted = set(args.sinks.split(","))
    sinks: list[tuple[str, Any]] = [("aiosmtpd", Sink)] if "aiosmtpd" in wanted else []
    if "smtp-sink" in wanted and SMTP_SINK.exists():
        sinks.append(("smtp-sink", PostfixSink))
    elif "smtp-sink" in wanted:
        print(f"{SMTP_SINK} missing (apt-get install postfix): smtp-sink rows skipped")
    sessions_list = [int(n) for n in args.sessions.split(",")]
    rows = [
        ("sink", "what", "messages", "seconds", "msg/s", "CPU ms/msg", "machine ms/msg", "ratio")
    ]
    notes = []
    load_before = os.getloadavg()
    with running_kafka() as endpoint:  # the peers run beside the same idle broker
        for name, sink_class in sinks:
            sink = sink_class()
            others = 0
            try:
                peer_s, busy = run_peer(sink.port, args.count)
                peer_rate = args.count / peer_s
                rows.append(
                    (name, "smtplib loop, one connection (peer)", str(args.count),
                     f"{peer_s:.2f}", f"{peer_rate:.0f}", "",
                     f"{1000 * busy / args.count:.2f}", "")
                )  # fmt: skip
                runs = [(f"sender, {n} sessions per channel (ours)", n, 1) for n in sessions_list]
                if args.replicas > 1:
                    runs.append(
                        (f"{args.replicas} sender processes, 16 sessions each", 16, args.replicas)
                    )
                for what, sessions, replicas in runs:
                    ours = asyncio.run(
                        run_ours(
                            endpoint.bootstrap_servers,
                            sink.port,
                            args.count,
                            args.conversations,
                            sessions,
                            replicas=replicas,
                        )
                    )
                    others += ours["other"]
                    rows.append(_ours_row(name, what, ours, peer_rate))
            finally:
                summary = sink.stop()
            notes.append(
                f"{name}: {summary['messages']} messages taken, {summary['duplicates']} duplicate "
                f"Message-IDs; sender outcomes other than sent: {others}"
            )
        ceiling = asyncio.run(
            run_ours(
                endpoint.bootstrap_servers, 25, args.count, args.conversations, 0, ceiling=True
            )
        )
        what = "Kafka only: consume + 2 events/record (ceiling)"
        rows.append((*_ours_row("(any)", what, ceiling, 1.0)[:-1], ""))
    load_after = os.getloadavg()
    _print_table(rows, notes, args.count, load_before[0], load_after[0])
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
