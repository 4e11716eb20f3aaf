"""Real Apache Kafka for `make run` and the tests: one KRaft node (broker + controller).

Which Kafka you get — `running_kafka()`
---------------------------------------
1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: that cluster is used and nothing is started
   (``version`` is ``"external"``);
2. ``EMAIL_CHANNELS_USE_TESTCONTAINERS=1``, or that variable is unset and ``docker info``
   answers within 5 s: the ``apache/kafka`` image in a container, through testcontainers
   (``EMAIL_CHANNELS_USE_TESTCONTAINERS=0`` never uses Docker);
3. otherwise: `KafkaBroker`, the official broker jars in a local JVM (Java 17+).

Where the local broker comes from
---------------------------------
``data/kafka/pom.xml`` names ``org.apache.kafka:kafka_2.13`` and a logging binding; Maven (the
only client that talks to the repository — its own settings decide which one) copies them and
their runtime dependencies into a staging directory of the cache. Every jar is checked against
the committed list ``data/kafka/kafka-<version>.sha256``: a missing, extra or different jar
stops the launch with its name. The checked directory then appears under its final name with
one ``rename``, so nobody ever sees a half-written cache and two processes racing both end up
with the same verified jars. A marker file lets later runs skip Maven; they still hash the
jars again (about 0.1 s)::

    $EMAIL_CHANNELS_CACHE_DIR/kafka/<version>/lib      (default: ~/.cache/email-channels/...)

Upgrading Kafka
---------------
1. change ``KAFKA_VERSION`` below and the versions in ``data/kafka/pom.xml``;
2. write the new checksum list (downloads through Maven, prints where it wrote)::

       uv run python -m devstack.kafka --write-checksums

3. review the diff of the ``.sha256`` file — each added, removed or changed jar is one line —
   delete the old list, commit.

Command line
------------
::

    uv run python -m devstack.kafka [--port 9092] [--data-dir DIR]

runs a broker in the foreground, prints ``KAFKA_BOOTSTRAP_SERVERS=...`` and ``KAFKA_VERSION=...``
on stdout and stops it cleanly on Ctrl-C or SIGTERM. A given ``--data-dir`` keeps topics between
runs; without one a temporary directory is used and removed.

Errors
------
::

    KafkaLauncherError
    ├── KafkaDistributionError    no java/mvn, Maven failed, malformed checksum list
    │   └── KafkaChecksumError    jars differ from the committed list (names them)
    └── KafkaStartError           broker exited or not ready in time (tail of its log)
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import enum
import hashlib
import importlib.resources
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

import structlog
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devstack.ports import free_ports

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from types import FrameType, TracebackType

_log = structlog.get_logger(__name__)

KAFKA_VERSION: Final = "4.1.1"
SCALA_VERSION: Final = "2.13"
KAFKA_IMAGE: Final = f"apache/kafka:{KAFKA_VERSION}"
CHECKSUMS_FILE: Final = f"kafka-{KAFKA_VERSION}.sha256"

_DATA_PACKAGE: Final = "devstack"
_DATA_DIR: Final = ("data", "kafka")
_MARKER: Final = ".verified"
_HOST: Final = "127.0.0.1"
_MAVEN_TIMEOUT_S: Final = 900.0
_DOCKER_TIMEOUT_S: Final = 5.0
_PORT_ATTEMPTS: Final = 3
_LOG_TAIL_LINES: Final = 40
_LOG_TAIL_BYTES: Final = 64 * 1024

# Settings every single-node cluster here shares, local JVM and container alike.
_SINGLE_NODE_SETTINGS: Final[Mapping[str, str]] = {
    "offsets.topic.replication.factor": "1",
    # 50 partitions (the default) make the first consumer group of a run slow to start.
    "offsets.topic.num.partitions": "8",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "8",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    # A misspelt topic name must fail loudly, as it does in production, not create a topic.
    "auto.create.topics.enable": "false",
    # Compacted topics (channels, filters, ...) are cleaned within seconds, in a small heap.
    "log.cleaner.enable": "true",
    "log.cleaner.threads": "1",
    "log.cleaner.backoff.ms": "1000",
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
}


class KafkaLauncherError(Exception):
    """Base of the errors of this module."""


class KafkaDistributionError(KafkaLauncherError):
    """The broker jars cannot be obtained: no java/mvn, Maven failed, a bad checksum list."""


class KafkaChecksumError(KafkaDistributionError):
    """The jars differ from the committed checksum list; each offending file is named."""

    def __init__(
        self,
        lib_dir: Path,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
        hint: str = "",
    ) -> None:
        self.lib_dir = lib_dir
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)
        problems = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("sha256 differs", self.mismatched),
                ("missing", self.missing),
                ("not in the list", self.unexpected),
            )
            if names
        ]
        message = f"Kafka jars in {lib_dir} do not match {CHECKSUMS_FILE} — {'; '.join(problems)}"
        super().__init__(f"{message}. {hint}" if hint else message)


class KafkaStartError(KafkaLauncherError):
    """The broker exited or did not answer in time; the message holds the tail of its log."""


@dataclass(frozen=True, slots=True)
class KafkaEndpoint:
    """Where a running Kafka is and which version it runs (``"external"`` when unknown)."""

    bootstrap_servers: str
    version: str = "external"


# --- checksums ----------------------------------------------------------------------------

_CHECKSUM_LINE: Final = re.compile(r"(?P<digest>[0-9a-f]{64}) [ *](?P<name>[^/\\]+)")


def parse_checksums(text: str) -> dict[str, str]:
    """``sha256sum`` output (``<hex>  <file name>`` per line) -> {file name: hex digest}."""
    digests: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _CHECKSUM_LINE.fullmatch(line)
        if match is None:
            raise KafkaDistributionError(
                f"line {number} of the checksum list is not `<sha256>  <file>`: {line!r}"
            )
        if match["name"] in digests:
            raise KafkaDistributionError(f"{match['name']} is listed twice in the checksum list")
        digests[match["name"]] = match["digest"]
    if not digests:
        raise KafkaDistributionError("the checksum list is empty")
    return digests


def format_checksums(digests: Mapping[str, str]) -> str:
    """The inverse of `parse_checksums`, sorted by name; ``sha256sum -c`` reads it."""
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def load_checksums() -> dict[str, str]:
    """The committed checksum list of `KAFKA_VERSION`."""
    return parse_checksums(_data_file(CHECKSUMS_FILE))


def hash_directory(directory: Path) -> dict[str, str]:
    """{file name: sha256} of every entry of ``directory`` except the cache marker."""
    return {
        entry.name: _sha256(entry) if entry.is_file() else "(not a regular file)"
        for entry in sorted(directory.iterdir())
        if entry.name != _MARKER
    }


def verify_jars(lib_dir: Path, expected: Mapping[str, str], *, hint: str = "") -> None:
    """Raise `KafkaChecksumError` unless ``lib_dir`` holds exactly the listed files."""
    actual = hash_directory(lib_dir)
    missing = sorted(expected.keys() - actual.keys())
    unexpected = sorted(actual.keys() - expected.keys())
    mismatched = sorted(
        name for name in expected.keys() & actual.keys() if expected[name] != actual[name]
    )
    if missing or unexpected or mismatched:
        raise KafkaChecksumError(
            lib_dir, missing=missing, unexpected=unexpected, mismatched=mismatched, hint=hint
        )


def write_checksums(path: Path) -> Path:
    """Download the jars of the committed pom through Maven and write their checksum list."""
    with tempfile.TemporaryDirectory(prefix="kafka-jars-") as staging:
        fetch_with_maven(Path(staging))
        digests = hash_directory(Path(staging))
    path.write_text(format_checksums(digests), encoding="utf-8")
    _log.info("kafka.checksums_written", path=str(path), jars=len(digests))
    return path


def _sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _data_file(name: str) -> str:
    return importlib.resources.files(_DATA_PACKAGE).joinpath(*_DATA_DIR, name).read_text("utf-8")


# --- the jar cache ------------------------------------------------------------------------


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$EMAIL_CHANNELS_CACHE_DIR``, else ``email-channels`` in the XDG cache (``~/.cache``)."""
    env = os.environ if environ is None else environ
    if configured := env.get("EMAIL_CHANNELS_CACHE_DIR"):
        return Path(configured).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "email-channels"


def ensure_kafka_jars(
    cache_dir: Path | None = None,
    *,
    fetch: Callable[[Path], None] | None = None,
    checksums: Mapping[str, str] | None = None,
) -> Path:
    """Return the verified lib directory of `KAFKA_VERSION`, downloading it on first use.

    ``fetch`` fills an empty directory with jars (default: `fetch_with_maven`); ``checksums``
    defaults to the committed list. Both exist for tests.
    """
    expected = load_checksums() if checksums is None else checksums
    fingerprint = hashlib.sha256(format_checksums(expected).encode()).hexdigest()
    version_dir = (cache_root() if cache_dir is None else cache_dir) / "kafka" / KAFKA_VERSION
    lib_dir = version_dir / "lib"
    if _marker_matches(lib_dir, fingerprint):
        verify_jars(lib_dir, expected, hint=f"Delete {lib_dir} to download the jars again.")
        return lib_dir

    _log.info("kafka.jars_downloading", version=KAFKA_VERSION, cache=str(lib_dir))
    started = time.monotonic()
    version_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".lib-", dir=version_dir))
    staging.chmod(0o755)  # mkdtemp's 0700 would be the final directory's mode after the rename
    try:
        (fetch_with_maven if fetch is None else fetch)(staging)
        verify_jars(staging, expected)
        (staging / _MARKER).write_text(f"{fingerprint}\n", encoding="utf-8")
        _publish(staging, lib_dir, fingerprint)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _log.info("kafka.jars_ready", jars=len(expected), seconds=round(time.monotonic() - started, 1))
    return lib_dir


def _marker_matches(lib_dir: Path, fingerprint: str) -> bool:
    try:
        return (lib_dir / _MARKER).read_text(encoding="utf-8").strip() == fingerprint
    except (FileNotFoundError, NotADirectoryError):
        return False


def _publish(staging: Path, lib_dir: Path, fingerprint: str) -> None:
    """Move the verified ``staging`` to ``lib_dir`` in one rename; a racing winner is fine."""
    if lib_dir.exists() and not _marker_matches(lib_dir, fingerprint):
        stale = lib_dir.with_name(f".stale-{uuid.uuid4().hex}")  # left by an older checksum list
        with contextlib.suppress(FileNotFoundError):
            lib_dir.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging.rename(lib_dir)
    except OSError:
        if not _marker_matches(lib_dir, fingerprint):
            raise
        _log.debug("kafka.jars_published_by_another_process", cache=str(lib_dir))


_ANSI_ESCAPE: Final = re.compile(r"\x1b\[[0-9;]*m")  # Maven colours even with -B at times


def fetch_with_maven(destination: Path) -> None:
    """Copy the runtime classpath of the committed pom into ``destination`` (offline first)."""
    mvn = _require_executable("mvn", "Maven (`mvn`) is needed once, to download the Kafka jars")
    with tempfile.TemporaryDirectory(prefix="kafka-pom-") as work:
        pom = Path(work) / "pom.xml"
        pom.write_text(_data_file("pom.xml"), encoding="utf-8")
        goal = [
            "-B",
            "-q",
            "--strict-checksums",
            "-Dstyle.color=never",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={destination}",
            "-DincludeScope=runtime",
        ]
        if _run_maven([mvn, "--offline", *goal], cwd=work).returncode == 0:
            return
        for leftover in destination.iterdir():  # whatever the offline attempt got to copy
            leftover.unlink()
        online = _run_maven([mvn, *goal], cwd=work)
    if online.returncode != 0:
        plain = _ANSI_ESCAPE.sub("", online.stdout)
        output = "\n".join(plain.splitlines()[-_LOG_TAIL_LINES:])
        raise KafkaDistributionError(
            f"mvn could not download Kafka {KAFKA_VERSION} (exit {online.returncode}):\n{output}"
        )


def _run_maven(command: list[str], *, cwd: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(  # noqa: S603 - fixed arguments, no shell
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=_MAVEN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise KafkaDistributionError(
            f"mvn did not finish within {_MAVEN_TIMEOUT_S:.0f} s: {' '.join(command)}"
        ) from error


def _require_executable(name: str, why: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise KafkaDistributionError(f"{why}, but `{name}` is not on PATH")
    return found


def java_executable() -> str:
    """The ``java`` that runs the broker (``$JAVA_HOME/bin/java``, else from PATH)."""
    return _java()


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (candidate := Path(home) / "bin" / "java").is_file():
        return str(candidate)
    return _require_executable("java", "Java 17 or newer runs the local Kafka broker")


# --- the local broker ---------------------------------------------------------------------


class KafkaBroker:
    """Apache Kafka as a child JVM: one KRaft node listening on 127.0.0.1.

    ``with KafkaBroker() as broker: ... broker.bootstrap_servers ...`` — ports are chosen free
    unless given; without ``data_dir`` a temporary one is used and removed on `stop`. The JVM
    runs in its own process group under a small ``sh`` supervisor; it is stopped by `stop`, at
    interpreter exit (atexit), and when this process dies without either (SIGKILL, os._exit).
    """

    version: str = KAFKA_VERSION

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        cache_dir: Path | None = None,
        heap: str = "512m",
        startup_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        if not re.fullmatch(r"\d+[kmg]", heap, flags=re.IGNORECASE):
            raise ValueError(f"heap must look like 512m or 1g, got {heap!r}")
        self._given_data_dir = data_dir
        self._fixed_ports = (port, controller_port)
        self._cache_dir = cache_dir
        self._heap = heap
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._overrides = dict(overrides or {})
        self._data_dir: Path | None = None
        self._owns_data_dir = False
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self._process is None or self._port is None:
            raise RuntimeError("the Kafka broker is not running; call start() first")
        return f"{_HOST}:{self._port}"

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise RuntimeError("the Kafka broker has not been started")
        return self._data_dir

    @property
    def log_file(self) -> Path:
        """The broker's own log (log4j); its tail is in every `KafkaStartError`."""
        return self.data_dir / "logs" / "server.log"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Block until the JVM exits (or ``timeout`` passes) and return its exit code."""
        if self._process is None:
            raise RuntimeError("the Kafka broker is not running")
        return self._process.wait(timeout)

    def start(self) -> Self:
        """Download/verify the jars, format the storage, start the JVM and wait until ready."""
        if self._process is not None:
            raise RuntimeError("the Kafka broker is already running")
        started = time.monotonic()
        java = _java()
        lib_dir = ensure_kafka_jars(self._cache_dir)
        data_dir = self._prepare_data_dir()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            free = iter(free_ports(2))
            port, controller_port = (chosen or next(free) for chosen in self._fixed_ports)
            properties = self._write_properties(data_dir, port, controller_port)
            if attempt == 1:
                _format_storage(java, lib_dir, data_dir, properties)
            try:
                self._launch(java, lib_dir, data_dir, properties, port)
                self._wait_until_ready()
            except BaseException as error:  # Ctrl-C while waiting must not leave a JVM either
                self._terminate()
                self._forget_process()
                if not self._may_retry(error, attempt):
                    raise
                _log.warning("kafka.port_taken_retrying", port=port, attempt=attempt)
                continue
            break
        _log.info(
            "kafka.ready",
            bootstrap_servers=self.bootstrap_servers,
            version=self.version,
            data_dir=str(data_dir),
            seconds=round(time.monotonic() - started, 1),
        )
        return self

    def stop(self) -> None:
        """SIGTERM the broker, SIGKILL its process group after ``stop_timeout``; idempotent."""
        if self._process is None:
            return
        started = time.monotonic()
        code = self._terminate()
        data_dir = self._data_dir
        self._forget_process()
        if self._owns_data_dir and data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
            self._data_dir = None
        _log.info("kafka.stopped", exit_code=code, seconds=round(time.monotonic() - started, 1))

    def kill(self) -> None:
        """SIGKILL the broker's whole process group at once (a crash, for fault injection).

        The data directory is kept, so ``start()`` again (with fixed ports, as given to the
        constructor) brings the same broker back with its log."""
        process = self._process
        if process is None:
            return
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
        if process.stdin is not None:  # the supervisor's pipe: ours to close
            process.stdin.close()
        self._forget_process()
        _log.info("kafka.killed", pid=process.pid)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _prepare_data_dir(self) -> Path:
        if self._data_dir is None:
            if self._given_data_dir is None:
                self._data_dir = Path(tempfile.mkdtemp(prefix="email-channels-kafka-"))
                self._owns_data_dir = True
            else:
                self._data_dir = self._given_data_dir.resolve()
        (self._data_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self._data_dir / "log4j2.properties").write_text(
            _data_file("log4j2.properties"), encoding="utf-8"
        )
        return self._data_dir

    def _write_properties(self, data_dir: Path, port: int, controller_port: int) -> Path:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{_HOST}:{controller_port}",
            "listeners": f"PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://{_HOST}:{port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data_dir / "kraft"),
            **_SINGLE_NODE_SETTINGS,
            **self._overrides,
        }
        path = data_dir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()), "utf-8")
        return path

    def _launch(
        self, java: str, lib_dir: Path, data_dir: Path, properties: Path, port: int
    ) -> None:
        jvm = [*_jvm(java, lib_dir, data_dir, self._heap), "kafka.Kafka", str(properties)]
        with (data_dir / "logs" / "jvm.out").open("ab") as console:
            self._process = subprocess.Popen(  # noqa: S603 - fixed script, arguments as "$@"
                ["/bin/sh", "-c", _SUPERVISOR, "kafka-supervisor", *jvm],
                cwd=data_dir,
                stdin=subprocess.PIPE,  # closed by stop() -- or by the kernel if we die
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, away from the terminal's Ctrl-C
            )
        self._port = port
        atexit.register(self.stop)
        _log.info("kafka.starting", pid=self._process.pid, port=port, data_dir=str(data_dir))

    def _wait_until_ready(self) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if (code := process.poll()) is not None:
                raise KafkaStartError(
                    f"Kafka exited with code {code} before it was ready.\n{self._log_tails()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaStartError(
                    f"Kafka did not answer on {self.bootstrap_servers} within "
                    f"{self._startup_timeout:.0f} s.\n{self._log_tails()}"
                )
            if probe_kafka(self.bootstrap_servers, timeout=min(5.0, remaining)):
                return
            time.sleep(0.2)

    def _may_retry(self, error: BaseException, attempt: int) -> bool:
        """Only a port we picked ourselves and somebody took before the JVM bound it."""
        return (
            isinstance(error, KafkaStartError)
            and "Address already in use" in str(error)
            and self._fixed_ports == (None, None)
            and attempt < _PORT_ATTEMPTS
        )

    def _terminate(self) -> int | None:
        """SIGTERM the JVM (via its supervisor), SIGKILL its process group after the timeout."""
        process = self._process
        if process is None:
            return None
        if process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
        try:
            return process.wait(self._stop_timeout)
        except subprocess.TimeoutExpired:
            _log.warning("kafka.stop_timeout_killing", pid=process.pid)
            _signal_group(process.pid, signal.SIGKILL)
        return process.wait()

    def _forget_process(self) -> None:
        atexit.unregister(self.stop)
        self._process = None
        self._port = None

    def _log_tails(self) -> str:
        logs = self.data_dir / "logs"
        return "\n".join(
            f"--- last lines of {path} ---\n{_tail(path)}"
            for path in (logs / "server.log", logs / "jvm.out")
        )


# The JVM's parent: it sends the JVM SIGTERM as soon as its stdin reaches end of file, which
# happens when stop() closes the pipe and also when our process dies in any way -- SIGKILL, a
# CI timeout, os._exit -- that atexit cannot see. It exits with the JVM's exit status.
_SUPERVISOR: Final = """\
exec 3<&0
"$@" 3<&- &
jvm=$!
{ while read -r _; do :; done; kill -TERM "$jvm" 2>/dev/null; } <&3 &
watcher=$!
exec 3<&-
wait "$jvm"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"""


def _jvm(java: str, lib_dir: Path, data_dir: Path, heap: str) -> list[str]:
    return [
        java,
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={data_dir / 'logs'}",
        "-cp",
        f"{lib_dir}{os.sep}*",
    ]


def _format_storage(java: str, lib_dir: Path, data_dir: Path, properties: Path) -> None:
    """``kafka-storage format`` once per data directory; a formatted one keeps its cluster id."""
    cluster_id = _existing_cluster_id(data_dir / "kraft") or _new_cluster_id()
    command = [
        *_jvm(java, lib_dir, data_dir, "256m"),
        "kafka.tools.StorageTool",
        "format",
        "--ignore-formatted",
        "-t",
        cluster_id,
        "-c",
        str(properties),
    ]
    result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise KafkaStartError(
            f"formatting the Kafka storage in {data_dir} failed (exit {result.returncode}):\n"
            f"{result.stdout}"
        )


def _existing_cluster_id(log_dir: Path) -> str | None:
    with contextlib.suppress(FileNotFoundError):
        for line in (log_dir / "meta.properties").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "cluster.id":
                return value.strip()
    return None


def _new_cluster_id() -> str:
    """A Kafka ``Uuid`` string: 16 random bytes, URL-safe base64 without padding."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):  # Kafka avoids ids that look like CLI options too
            return candidate


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            stream.seek(max(0, stream.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            text = stream.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return "(no such file)"
    return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])


# --- readiness ----------------------------------------------------------------------------


def probe_kafka(bootstrap_servers: str, *, timeout: float = 5.0) -> bool:
    """True when the cluster answers a metadata request that lists at least one broker.

    A listening port is not enough: a KRaft broker accepts connections before it has
    registered with the controller, and until then metadata lists no broker. Safe to call
    with or without a running event loop (the probe runs on a thread of its own).
    """
    host, _, port = bootstrap_servers.split(",", maxsplit=1)[0].strip().rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError:
        return False  # checked first: aiokafka logs every refused connection as an error
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-probe") as pool:
        return pool.submit(asyncio.run, _describe_cluster(bootstrap_servers, timeout)).result()


async def _describe_cluster(bootstrap_servers: str, timeout: float) -> bool:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="devstack-readiness",
        request_timeout_ms=int(timeout * 1000),
    )
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            cluster = await admin.describe_cluster()
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()
    return bool(cluster.get("brokers"))


def _wait_for(cluster: KafkaEndpoint, *, timeout: float, diagnostics: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not probe_kafka(cluster.bootstrap_servers):
        if time.monotonic() > deadline:
            raise KafkaStartError(
                f"Kafka did not answer on {cluster.bootstrap_servers} within {timeout:.0f} s.\n"
                f"{diagnostics()}"
            )
        time.sleep(0.5)


# --- which Kafka ------------------------------------------------------------------------


class KafkaBackend(enum.StrEnum):
    EXTERNAL = "external"
    CONTAINER = "testcontainers"
    LOCAL = "local"


_YES: Final = frozenset({"1", "true", "yes", "on"})
_NO: Final = frozenset({"0", "false", "no", "off"})


def docker_available(timeout: float = _DOCKER_TIMEOUT_S) -> bool:
    """True when ``docker info`` reaches a daemon within ``timeout`` seconds."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [docker, "info", "--format", "{{.ServerVersion}}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def choose_kafka_backend(
    environ: Mapping[str, str] | None = None,
    *,
    docker_reachable: Callable[[], bool] = docker_available,
) -> KafkaBackend:
    """The selection policy of `running_kafka` (see the module docstring)."""
    env = os.environ if environ is None else environ
    if env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        return KafkaBackend.EXTERNAL
    flag = env.get("EMAIL_CHANNELS_USE_TESTCONTAINERS", "").strip().lower()
    if flag in _YES:
        return KafkaBackend.CONTAINER
    if flag in _NO:
        return KafkaBackend.LOCAL
    if flag:
        raise ValueError(f"EMAIL_CHANNELS_USE_TESTCONTAINERS must be 1 or 0, got {flag!r}")
    return KafkaBackend.CONTAINER if docker_reachable() else KafkaBackend.LOCAL


@contextlib.contextmanager
def running_kafka(
    *,
    environ: Mapping[str, str] | None = None,
    data_dir: Path | None = None,
    port: int | None = None,
) -> Iterator[KafkaEndpoint]:
    """A Kafka to talk to for the duration of the ``with`` block, chosen by the environment.

    ``data_dir`` and ``port`` apply to the local broker (``port`` also to the container).
    """
    env = os.environ if environ is None else environ
    backend = choose_kafka_backend(env)
    _log.info("kafka.backend_selected", backend=backend.value)
    if backend is KafkaBackend.EXTERNAL:
        yield KafkaEndpoint(env["KAFKA_BOOTSTRAP_SERVERS"].strip())
    elif backend is KafkaBackend.CONTAINER:
        with _kafka_container(port) as cluster:
            yield cluster
    else:
        with KafkaBroker(data_dir=data_dir, port=port) as broker:
            yield KafkaEndpoint(broker.bootstrap_servers, broker.version)


def container_environment(host_port: int) -> dict[str, str]:
    """Configuration of the ``apache/kafka`` image as its ``KAFKA_*`` variables."""
    settings = {
        "node.id": "1",
        "process.roles": "broker,controller",
        "controller.quorum.voters": "1@localhost:9093",
        "listeners": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "advertised.listeners": f"PLAINTEXT://{_HOST}:{host_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        **_SINGLE_NODE_SETTINGS,
    }
    # The image's rule: "_" -> "__", "-" -> "___", then "." -> "_", upper case.
    return {
        "KAFKA_" + key.replace("_", "__").replace("-", "___").replace(".", "_").upper(): value
        for key, value in settings.items()
    } | {"CLUSTER_ID": _new_cluster_id()}


@contextlib.contextmanager
def _kafka_container(port: int | None) -> Iterator[KafkaEndpoint]:
    """``apache/kafka`` through testcontainers, on a fixed host port it advertises.

    testcontainers' own ``KafkaContainer`` drives Confluent's image scripts and does not work
    with the ``apache/kafka`` image, hence a plain container.
    """
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415 - Docker only

    host_port = port or free_ports(1)[0]
    container = DockerContainer(KAFKA_IMAGE).with_bind_ports(9092, host_port)
    for key, value in container_environment(host_port).items():
        container.with_env(key, value)
    with container:
        cluster = KafkaEndpoint(f"{_HOST}:{host_port}", KAFKA_VERSION)
        _wait_for(
            cluster,
            timeout=60.0,
            diagnostics=lambda: "\n".join(
                b"".join(container.get_logs())
                .decode(errors="replace")
                .splitlines()[-_LOG_TAIL_LINES:]
            ),
        )
        _log.info("kafka.ready", bootstrap_servers=cluster.bootstrap_servers, image=KAFKA_IMAGE)
        yield cluster


# --- command line -----------------------------------------------------------------------


class _Terminated(Exception):
    """SIGTERM, turned into an exception so the broker is stopped on the way out."""


def _raise_terminated(_signum: int, _frame: FrameType | None) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.kafka",
        description=f"Run Apache Kafka {KAFKA_VERSION} (KRaft, one node) in the foreground.",
    )
    parser.add_argument("--port", type=int, help="client port (default: a free one)")
    parser.add_argument("--data-dir", type=Path, help="keep topics here (default: temporary)")
    parser.add_argument(
        "--write-checksums",
        nargs="?",
        const=Path(__file__).parent.joinpath(*_DATA_DIR, CHECKSUMS_FILE),
        type=Path,
        metavar="PATH",
        help="download the pom's jars and write their sha256 list (default: the committed one)",
    )
    args = parser.parse_args(argv)

    from email_channels.logconfig import configure_logging  # noqa: PLC0415 - CLI only

    configure_logging(service="devstack-kafka")
    if args.write_checksums is not None:
        try:
            written = write_checksums(args.write_checksums)
        except KafkaLauncherError as error:
            _log.error("kafka.checksums_failed", error=str(error))
            return 1
        sys.stdout.write(f"{written}\n")
        return 0

    signal.signal(signal.SIGTERM, _raise_terminated)
    broker = KafkaBroker(data_dir=args.data_dir, port=args.port)
    try:
        broker.start()
        sys.stdout.write(
            f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}\nKAFKA_VERSION={broker.version}\n"
        )
        sys.stdout.flush()
        code = broker.wait()
    except (KeyboardInterrupt, _Terminated):
        return 0
    except KafkaLauncherError as error:
        _log.error("kafka.failed", error=str(error))
        return 1
    else:
        _log.error("kafka.exited_unexpectedly", exit_code=code, log_tail=_tail(broker.log_file))
        return 1
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
