"""Sender throughput: 3,000 x 5 KB email.outbound -> SMTP sink, against a plain smtplib loop.

Everything runs on this machine over loopback:

- a real Kafka broker (devstack; or the cluster in KAFKA_BOOTSTRAP_SERVERS),
- an SMTP sink: aiosmtpd in its own process (this script with ``--sink``), plain SMTP, no
  AUTH, counting messages and duplicate Message-IDs,
- **peer**: one ``smtplib.SMTP`` connection sending the same 3,000 pre-built messages in a loop
  (MAIL/RCPT/DATA each), timed from the first MAIL to the last reply;
- **ours**: ``python -m sender`` as a process, the 3,000 records already on email.outbound;
  timed from its first intent (``sending``) to its last ``sent`` on email.delivery (Kafka
  consumption, compose, header checks, intent, SMTP, delivery events all included).

Bounded: 3,000 messages each (``--count``), a 300 s ceiling. Prints one table with the ratio.
``BENCH_SENDER_LOG=path`` keeps the sender's log.
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
import subprocess
import sys
import tempfile
import time
import uuid
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

CEILING_S = 300.0
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


def run_peer(port: int, count: int) -> float:
    messages = peer_messages(count)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        started = time.perf_counter()
        for mail_from, to, data in messages:
            client.sendmail(mail_from, [to], data)
        return time.perf_counter() - started


# --- ours: the sender process -----------------------------------------------------------------


async def run_ours(
    bootstrap: str, sink_port: int, count: int, conversations: int
) -> dict[str, Any]:
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

    prefix = f"bench-{uuid.uuid4().hex[:8]}."
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
                    "outbound_id": f"bench-{index}",
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
    }
    log_path = os.environ.get("BENCH_SENDER_LOG")
    sender, log = _start_sender(env, Path(log_path) if log_path else None)
    try:
        events = await _collect_deliveries(
            AIOKafkaConsumer,
            kafka,
            topics.delivery,
            count=count,
            decode=decode,
            model=DeliveryEvent,
        )
        cpu_s = _cpu_seconds(sender.pid)
    finally:
        sender.send_signal(signal.SIGTERM)
        try:
            sender.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sender.kill()
        log.close()
    intents = [e.at for e in events if e.status is DeliveryStatus.SENDING]
    sent = [e for e in events if e.status is DeliveryStatus.SENT]
    others = [e for e in events if e.status not in {DeliveryStatus.SENDING, DeliveryStatus.SENT}]
    span = (max(e.at for e in sent) - min(intents)).total_seconds()
    return {"seconds": span, "sent": len(sent), "other": len(others), "cpu_s": cpu_s}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_sender(
    env: dict[str, str], log_path: Path | None
) -> tuple[subprocess.Popen[bytes], Any]:
    log = log_path.open("wb") if log_path else tempfile.TemporaryFile()  # noqa: SIM115 - closed by the caller
    profile = os.environ.get("BENCH_SENDER_PROFILE")  # cProfile output of the sender process
    command = [
        sys.executable,
        *(["-m", "cProfile", "-o", profile] if profile else []),
        "-m",
        "sender",
    ]
    process = subprocess.Popen(command, env=env, stderr=log, stdout=log)
    return process, log


async def _collect_deliveries(
    consumer_class: Any, kafka: Any, topic: str, *, count: int, decode: Any, model: Any
) -> list[Any]:
    consumer = consumer_class(
        topic, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    events: list[Any] = []
    final = 0
    deadline = time.monotonic() + CEILING_S
    try:
        while final < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {final} of {count} outcomes within {CEILING_S}s")
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    event = decode(model, record.value)
                    events.append(event)
                    final += event.status.final
    finally:
        await consumer.stop()
    return events


# --- the table --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--conversations", type=int, default=300)
    parser.add_argument("--sink", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink is not None:
        run_sink(args.sink)
        return 0

    from devstack.kafka import running_kafka  # noqa: PLC0415

    sink = Sink()
    try:
        with running_kafka() as endpoint:  # the peer runs beside the same idle broker
            peer_s = run_peer(sink.port, args.count)
            ours = asyncio.run(
                run_ours(endpoint.bootstrap_servers, sink.port, args.count, args.conversations)
            )
    finally:
        summary = sink.stop()
    peer_rate = args.count / peer_s
    ours_rate = ours["sent"] / ours["seconds"]
    rows = [
        ("what", "messages", "seconds", "msg/s"),
        (
            "smtplib loop, one connection (peer)",
            str(args.count),
            f"{peer_s:.2f}",
            f"{peer_rate:.0f}",
        ),
        (
            "sender: email.outbound -> SMTP (ours)",
            str(ours["sent"]),
            f"{ours['seconds']:.2f}",
            f"{ours_rate:.0f}",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(
        f"sender throughput, {args.count} x {BODY_BYTES // 1024} KB to an aiosmtpd sink on loopback"
    )
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"ratio ours / peer: {ours_rate / peer_rate:.2f}x (target >= 3x)")
    print(
        f"sink: {summary['messages']} messages, {summary['duplicates']} duplicate Message-IDs; "
        f"sender non-sent outcomes: {ours['other']}; sender CPU {ours['cpu_s']:.1f} s "
        f"(start-up included)"
    )
    print("figures taken on a shared 2-core machine; other work may have loaded the CPU")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
