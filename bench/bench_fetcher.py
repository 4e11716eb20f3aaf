"""Fetcher benchmark: throughput against fetchmail, IDLE latency, memory per idle mailbox.

Starts its own Kafka (or uses KAFKA_BOOTSTRAP_SERVERS) and its own Dovecot, generates a corpus,
and prints one table:

1. Throughput, same mailbox, same run: ``python -m fetcher`` (IMAPS, mark-seen, to email.raw with
   acks=all) against Debian's ``fetchmail`` (IMAPS, keep + fetchall, each message to
   ``cat >/dev/null``), on 3,000 x 26 KB and 3,000 x 2 KB. Both include connect and login.
2. IDLE latency at 100 msg/s into a quiet mailbox: delivery over LMTP -> record on email.raw,
   p50/p99; beside it the same figure for a bare IDLE client (delivery -> ``* n EXISTS``), which
   is Dovecot's own floor: it tells IDLE clients about a change 500 ms after it
   (``NOTIFY_DELAY_MSECS`` in src/lib-storage/mailbox-watch.c), so the first half second of a
   burst waits for that push whoever the client is. Three rows: all messages; the messages sent
   from 1 s into the burst, when the fetcher keeps the mailbox hot (NOOP polls); the first one.
3. RSS per idle mailbox: one fetcher process with 1,000 IMAPS channels in IDLE, (RSS after -
   RSS before) / 1,000.

Bounded: every wait has a deadline, the corpus is fixed, nothing loops. Loopback only.
Run: ``make bench BENCH=fetcher`` (``BENCH_FETCHER_IDLE_MAILBOXES`` / ``..._MESSAGES`` shrink it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from base64 import b64decode
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from child_process import cpu_seconds, rss_kib

from devstack.dovecot import Dovecot
from devstack.kafka import running_kafka
from devstack.ports import free_port
from email_channels.admin import ensure_topics
from email_channels.codec import decode_key
from email_channels.events import ChannelConfig, ImapInbound, TlsMode
from email_channels.producer import EventProducer
from email_channels.secretbox import SecretBox
from email_channels.settings import KafkaSettings

MESSAGES = int(os.environ.get("BENCH_FETCHER_MESSAGES", "3000"))
IDLE_MAILBOXES = int(os.environ.get("BENCH_FETCHER_IDLE_MAILBOXES", "1000"))
LATENCY_RATE = 100  # messages per second
LATENCY_SECONDS = 10
HOT_AFTER_S = 1.0  # the "hot" figure counts messages sent this long after the first one
DEADLINE_S = 300.0


class BenchDovecot(Dovecot):
    """The devstack Dovecot, plus an LMTP listener and limits for 1,000 IMAPS connections."""

    def __init__(self) -> None:
        super().__init__()
        self.lmtp_port = 0

    def _render_config(self, pki: Any) -> str:
        self.lmtp_port = free_port()
        config: str = super()._render_config(pki)
        config = config.replace("protocols = imap pop3", "protocols = imap pop3 lmtp")
        return (
            config
            + f"""
default_client_limit = 5000
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
}}
protocol lmtp {{
  auth_username_format = %Ln
}}
# High-performance login: a few login processes hold every TLS connection.
service imap-login {{
  service_count = 0
  client_limit = 2000
  process_min_avail = 2
}}
# One imap process per connection (Dovecot's default), so room for every idle mailbox.
service imap {{
  process_limit = {IDLE_MAILBOXES + 300}
}}
service anvil {{
  client_limit = 5000
}}
service auth {{
  client_limit = 5000
}}
"""
        )


# --- corpus ---------------------------------------------------------------------------------


def message(n: int, size: int, *, to: str = "bench@example.test", extra: str = "") -> bytes:
    head = (
        f"From: Sender <sender@example.com>\r\nTo: {to}\r\nSubject: bench {n}\r\n"
        f"Message-ID: <bench-{n}-{uuid.uuid4().hex}@example.com>\r\n"
        f"Date: Mon, 30 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n{extra}"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    body = (line * (size // len(line) + 1))[: max(size - len(head), 0)]
    return head + body


def fill_maildir(dovecot: Dovecot, user: str, count: int, size: int) -> None:
    """Write ``count`` messages straight into the user's Maildir (owned like Dovecot's mail)."""
    home = dovecot.workdir / "home" / user
    maildir = home / "Maildir"
    stat = home.stat()
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for path in (maildir, *(maildir / s for s in ("cur", "new", "tmp"))):
        os.chown(path, stat.st_uid, stat.st_gid)
    now = int(time.time())
    for n in range(count):
        raw = message(n, size)
        path = maildir / "cur" / f"{now}.M{n}P{os.getpid()}.bench,S={len(raw)}:2,"
        path.write_bytes(raw)
        os.chown(path, stat.st_uid, stat.st_gid)


def warm_up(dovecot: Dovecot, user: str, password: str) -> None:
    """Log in once and list every UID, so Dovecot's index exists before anything is timed."""
    import imaplib  # noqa: PLC0415 - only here

    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    with imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=context) as imap:
        imap.login(user, password)
        imap.select("INBOX")
        imap.uid("FETCH", "1:*", "(UID RFC822.SIZE)")


# --- the peer: fetchmail ---------------------------------------------------------------------


def run_fetchmail(
    dovecot: Dovecot, user: str, password: str, workdir: Path
) -> tuple[float, int, float]:
    """fetchmail keep + fetchall over IMAPS, each message to /dev/null; (seconds, messages,
    CPU seconds of fetchmail and its MDA children)."""
    rc = workdir / f"fetchmailrc-{user}"
    rc.write_text(
        "set no syslog\n"
        f"poll {dovecot.host} with proto IMAP port {dovecot.imaps_port}\n"
        f'  user "{user}" there with password "{password}" is "root" here\n'
        f'  ssl sslcertck sslcertfile "{dovecot.ca_file}" sslcommonname "localhost"\n'
        '  keep fetchall mda "cat >/dev/null"\n'
    )
    rc.chmod(0o600)
    env = os.environ | {"HOME": str(workdir), "FETCHMAILHOME": str(workdir)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        ["fetchmail", "-f", str(rc), "-N", "--nosyslog", "-v", "--idfile", str(workdir / "ids")],
        env=env,
        capture_output=True,
        timeout=DEADLINE_S,
        check=False,
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    taken = output.count("reading message ")
    if result.returncode not in {0, 1}:
        raise RuntimeError(f"fetchmail failed ({result.returncode}):\n{output[-2000:]}")
    return seconds, taken, cpu


# --- the fetcher -------------------------------------------------------------------------------


class Fetcher:
    """``python -m fetcher`` as a process, its log in a file."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.log = workdir / f"{name}.log"
        self._env = env | {"FETCHER_INSTANCE_ID": name}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fetcher"],
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def rss_kib(self) -> int:
        assert self.process is not None
        return rss_kib(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time the process used so far."""
        assert self.process is not None
        return cpu_seconds(self.process.pid)

    def count(self, marker: str) -> int:
        return self.log.read_text(errors="replace").count(marker)

    async def wait_for(self, marker: str, times: int = 1, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.count(marker) < times:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"fetcher exited:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{marker!r} x{times} not logged in {timeout}s")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RawReader:
    """Counts email.raw records per channel, with the time each arrived."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._consumer = AIOKafkaConsumer(
            **kafka.client_kwargs(), group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=20
        )
        self._topic = kafka.topics.raw
        self.arrived: dict[str, list[tuple[float, bytes]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe([self._topic])
        while not self._consumer.assignment():
            await self._consumer.getmany(timeout_ms=100)
        await self._consumer.seek_to_end()
        for tp in self._consumer.assignment():
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    key = decode_key(record.key) or ""
                    self.arrived.setdefault(key, []).append((now, record.value or b""))

    async def wait(self, channel_id: str, count: int, timeout: float = DEADLINE_S) -> float:
        deadline = time.monotonic() + timeout
        while len(self.arrived.get(channel_id, [])) < count:
            if time.monotonic() > deadline:
                got = len(self.arrived.get(channel_id, []))
                raise TimeoutError(f"{got}/{count} records of {channel_id} in {timeout}s")
            await asyncio.sleep(0.01)
        return self.arrived[channel_id][count - 1][0]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


def channel(dovecot: Dovecot, box: SecretBox, user: str, password: str) -> ChannelConfig:
    return ChannelConfig(
        id=f"bench-{user}",
        name=f"bench {user}",
        email_address=f"{user}@example.test",
        default_campaign_id="bench",
        enabled=True,
        inbound=ImapInbound(
            host=dovecot.host,
            port=dovecot.imaps_port,
            tls=TlsMode.SSL,
            username=user,
            password=box.encrypt(password),
        ),
    )


# --- IDLE latency ------------------------------------------------------------------------------


def deliver_at_rate(
    dovecot: BenchDovecot, user: str, sent: list[float], stop: threading.Event
) -> None:
    """LMTP deliveries at LATENCY_RATE per second; ``sent[i]`` is when message i was accepted."""
    with smtplib.LMTP(dovecot.host, dovecot.lmtp_port, timeout=30) as lmtp:
        started = time.perf_counter()
        for n in range(LATENCY_RATE * LATENCY_SECONDS):
            if stop.is_set():
                return
            due = started + n / LATENCY_RATE
            if (pause := due - time.perf_counter()) > 0:
                time.sleep(pause)
            raw = message(n, 2000, extra=f"X-Bench-Seq: {n}\r\n")
            lmtp.sendmail("sender@example.com", [f"{user}@example.test"], raw)
            sent.append(time.perf_counter())


def watch_exists(
    dovecot: Dovecot, user: str, password: str, seen: dict[int, float], stop: threading.Event
) -> None:
    """A bare IDLE client: when did ``* n EXISTS`` arrive, per n (Dovecot's own latency)."""
    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    with (
        socket.create_connection((dovecot.host, dovecot.imaps_port)) as raw,
        context.wrap_socket(raw, server_hostname=dovecot.host) as sock,
    ):
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(f'a LOGIN "{user}" "{password}"\r\n'.encode())
        while not reader.readline().startswith(b"a "):
            pass
        sock.sendall(b"b SELECT INBOX\r\n")
        base = 0
        while not (line := reader.readline()).startswith(b"b "):
            if line.endswith(b" EXISTS\r\n"):
                base = int(line.split()[1])
        sock.sendall(b"c IDLE\r\n")
        sock.settimeout(0.5)
        buffer = b""
        while not stop.is_set():
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            now = time.perf_counter()
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                if line.endswith(b" EXISTS"):
                    count = int(line.split()[1])
                    for n in range(base, count):
                        seen.setdefault(n, now)
                    base = max(base, count)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def seq_of(value: bytes) -> int | None:
    raw = json.loads(value).get("raw_mime")
    if raw is None:
        return None
    for line in b64decode(raw).split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.startswith(b"X-Bench-Seq: "):
            return int(line.split()[1])
    return None


# --- the run -----------------------------------------------------------------------------------


class Rows(list[tuple[str, ...]]):
    """The table's rows; each is also printed as soon as it is measured (a later failure
    keeps the earlier figures)."""

    def append(self, row: tuple[str, ...]) -> None:
        print("  ".join(row), flush=True)
        super().append(row)


async def run(kafka_servers: str, dovecot: BenchDovecot, workdir: Path) -> list[tuple[str, ...]]:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_servers, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.", partitions=3
    )
    await ensure_topics(kafka)
    keys = f"bench:{SecretBox.generate_key()}"
    box = SecretBox.from_env(keys)
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_servers,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "EMAIL_CHANNELS_SECRET_KEYS": keys,
        "EMAIL_CHANNELS_ALLOWED_HOSTS": "127.0.0.1",
        "EMAIL_CHANNELS_CA_FILE": str(dovecot.ca_file),
        "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{workdir}/blobs",
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
        "EMAIL_CHANNELS_LOG_LEVEL": "info",
    }
    rows = Rows()
    users: dict[str, str] = {}
    for name, size in (("big", 26 * 1024), ("small", 2 * 1024)):
        users[name] = secrets.token_urlsafe(10)
        dovecot.add_user(name, users[name])
        fill_maildir(dovecot, name, MESSAGES, size)
        warm_up(dovecot, name, users[name])
    users["idle"] = secrets.token_urlsafe(10)
    dovecot.add_user("idle", users["idle"])

    reader = RawReader(kafka)
    await reader.start()
    fetcher = Fetcher("bench-fetcher", env, workdir)
    fetcher.start()
    try:
        await fetcher.wait_for("fetcher starting")
        async with EventProducer(kafka, client_id="bench") as producer:
            for name, label in (("big", "26 KB"), ("small", "2 KB")):
                fm_seconds, fm_taken, fm_cpu = await asyncio.to_thread(
                    run_fetchmail, dovecot, name, users[name], workdir
                )
                config = channel(dovecot, box, name, users[name])
                cpu_before = fetcher.cpu_seconds()
                started = time.perf_counter()
                await producer.publish(kafka.topics.channels, config.id, config)
                done = await reader.wait(config.id, MESSAGES)
                cpu = fetcher.cpu_seconds() - cpu_before
                ours = MESSAGES / (done - started)
                theirs = MESSAGES / fm_seconds
                rows.append(
                    (
                        f"throughput {MESSAGES} x {label} (msg/s, wall clock)",
                        f"{ours:,.0f}",
                        f"fetchmail {theirs:,.0f} ({fm_taken} taken)",
                        f"{ours / theirs:.1f}x",
                    )
                )
                per_ours, per_theirs = cpu / MESSAGES * 1000, fm_cpu / MESSAGES * 1000
                rows.append(
                    (
                        f"  CPU per message {label} (ms, load-independent)",
                        f"{per_ours:.2f} (= {1000 / per_ours:,.0f} msg/s per core)",
                        f"fetchmail + MDA {per_theirs:.2f}",
                        f"{per_theirs / per_ours:.1f}x",
                    )
                )
            for row in await latency(dovecot, producer, kafka, box, users["idle"], reader, fetcher):
                rows.append(row)
    finally:
        fetcher.stop()
        await reader.stop()
    rows.append(await idle_memory(dovecot, kafka, box, env, workdir))
    return rows


async def latency(
    dovecot: BenchDovecot,
    producer: EventProducer,
    kafka: KafkaSettings,
    box: SecretBox,
    password: str,
    reader: RawReader,
    fetcher: Fetcher,
) -> list[tuple[str, ...]]:
    config = channel(dovecot, box, "idle", password)
    await producer.publish(kafka.topics.channels, config.id, config)
    await fetcher.wait_for("imap logged in", times=3)
    await asyncio.sleep(2)  # the first (empty) sync is over: the worker sits in IDLE
    sent: list[float] = []
    seen: dict[int, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_exists, args=(dovecot, "idle", password, seen, stop), daemon=True
    )
    watcher.start()
    await asyncio.sleep(1)
    total = LATENCY_RATE * LATENCY_SECONDS
    try:
        await asyncio.to_thread(deliver_at_rate, dovecot, "idle", sent, stop)
        await reader.wait(config.id, total, timeout=60)
    finally:
        stop.set()
    ours: dict[int, float] = {}
    for arrived, value in reader.arrived[config.id]:
        seq = seq_of(value)
        if seq is not None and seq < len(sent):
            ours.setdefault(seq, arrived - sent[seq])
    floor = {n: seen[n] - sent[n] for n in range(len(sent)) if n in seen}
    # Dovecot pushes a change to IDLE clients 0.5 s after it (NOTIFY_DELAY_MSECS): the first
    # half second of a burst into a quiet mailbox waits for that push, whoever the client is.
    # After it, the fetcher keeps the mailbox hot (NOOP every FETCHER_HOT_POLL_S).
    hot = [n for n in range(len(sent)) if sent[n] >= sent[0] + HOT_AFTER_S]
    ms = 1000

    def p50_p99(values: list[float]) -> str:
        return f"{percentile(values, 50) * ms:.0f} / {percentile(values, 99) * ms:.0f}"

    def diff(a: list[float], b: list[float], p: float) -> str:
        return f"{(percentile(a, p) - percentile(b, p)) * ms:+.0f} ms p{p:.0f}"

    whole, whole_floor = list(ours.values()), list(floor.values())
    burst = [ours[n] for n in hot if n in ours]
    burst_floor = [floor[n] for n in hot if n in floor]
    return [
        (
            f"IDLE latency at {LATENCY_RATE} msg/s, LMTP -> email.raw, all (p50 / p99 ms)",
            p50_p99(whole),
            f"bare IDLE client, LMTP -> EXISTS: {p50_p99(whole_floor)}",
            diff(whole, whole_floor, 50),
        ),
        (
            f"  messages sent {HOT_AFTER_S:.0f} s into the burst (mailbox hot) (p50 / p99 ms)",
            p50_p99(burst),
            f"bare IDLE client: {p50_p99(burst_floor)}",
            diff(burst, burst_floor, 99),
        ),
        (
            "  first message into the quiet mailbox (ms)",
            f"{ours.get(0, float('nan')) * ms:.0f}",
            f"bare IDLE client: {floor.get(0, float('nan')) * ms:.0f}",
            "Dovecot pushes 500 ms after a change",
        ),
    ]


async def idle_memory(
    dovecot: BenchDovecot, kafka: KafkaSettings, box: SecretBox, env: dict[str, str], workdir: Path
) -> tuple[str, ...]:
    password = secrets.token_urlsafe(10)
    names = [f"idle{n:04d}" for n in range(IDLE_MAILBOXES)]
    for name in names:
        dovecot.add_user(name, password)
    fetcher = Fetcher("bench-idle", env | {"FETCHER_INSTANCE_ID": "bench-idle"}, workdir)
    fetcher.start()
    try:
        await fetcher.wait_for("fetcher starting")
        await asyncio.sleep(5)  # joined the group, views read: the empty process
        before = fetcher.rss_kib()
        async with EventProducer(kafka, client_id="bench-idle") as producer:
            configs = [channel(dovecot, box, name, password) for name in names]
            await producer.publish_all(kafka.topics.channels, [(c.id, c) for c in configs])
        with contextlib.suppress(TimeoutError):
            await fetcher.wait_for("channel active", times=IDLE_MAILBOXES, timeout=DEADLINE_S)
        await asyncio.sleep(5)
        after = fetcher.rss_kib()
        connections = established(dovecot.imaps_port, fetcher)
    finally:
        fetcher.stop()
    active = min(fetcher.count("channel active"), IDLE_MAILBOXES)
    per = (after - before) / max(active, 1)
    return (
        f"RSS per idle IMAPS mailbox, {active} of {IDLE_MAILBOXES} in one process (KiB)",
        f"{per:.0f}",
        f"process {before / 1024:.0f} -> {after / 1024:.0f} MiB, {connections} TLS connections",
        "target <= 98",
    )


def established(port: int, fetcher: Fetcher) -> int:
    """The fetcher's open connections to Dovecot's IMAPS port."""
    assert fetcher.process is not None
    output = subprocess.run(
        ["ss", "-tnp", "state", "established", f"( dport = :{port} )"],
        capture_output=True,
        check=False,
        text=True,
    ).stdout
    return output.count(f"pid={fetcher.process.pid},")


def main() -> None:
    if shutil.which("fetchmail") is None:
        sys.exit("fetchmail is not installed: make bench installs it (deploy/bootstrap.sh)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-fetcher-"))
    started = time.perf_counter()
    try:
        with running_kafka() as kafka, BenchDovecot() as dovecot:
            rows = asyncio.run(run(kafka.bootstrap_servers, dovecot, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    header = ("figure", "fetcher", "peer (same run)", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print()
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    load = os.getloadavg()
    print(
        f"\n{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
        f" (shared machine: figures are noisy); took {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
