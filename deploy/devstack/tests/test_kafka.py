"""The Kafka launcher: verified jars, a real broker that round-trips records, the policy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack.kafka import (
    KAFKA_VERSION,
    KafkaBackend,
    KafkaBroker,
    KafkaChecksumError,
    KafkaDistributionError,
    choose_kafka_backend,
    container_environment,
    ensure_kafka_jars,
    format_checksums,
    hash_directory,
    load_checksums,
    parse_checksums,
    running_kafka,
    verify_jars,
)

if TYPE_CHECKING:
    from pathlib import Path

# --- a real broker -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker():
    with KafkaBroker() as running:
        yield running


@pytest.mark.integration
async def test_record_round_trips_with_acks_all_and_idempotence(broker: KafkaBroker):
    """A record produced with acks=all + idempotence is consumed back, key/value/headers intact."""
    topic = f"devstack-test-{uuid.uuid4().hex}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = await producer.send_and_wait(
            topic, b"hello", key=b"channel-1", headers=[("campaign", b"c-7")]
        )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        group_id=f"devstack-test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            record = await consumer.getone()
    finally:
        await consumer.stop()

    assert (record.offset, record.key, record.value) == (sent.offset, b"channel-1", b"hello")
    assert list(record.headers) == [("campaign", b"c-7")]
    assert broker.version == KAFKA_VERSION == "4.1.1"


@pytest.mark.integration
async def test_topics_are_not_created_by_asking_for_them(broker: KafkaBroker):
    """auto.create.topics.enable=false: a metadata request for a misspelt topic creates nothing."""
    topic = f"devstack-missing-{uuid.uuid4().hex}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        topics = await admin.list_topics()
    finally:
        await admin.close()
    assert described["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION
    assert topic not in topics


def _group_is_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


@pytest.mark.integration
def test_stop_ends_the_jvm_and_removes_the_temporary_data_dir():
    """Leaving the with-block stops every process of the broker and deletes what it wrote."""
    with KafkaBroker() as running:
        assert running._process is not None
        pgid = running._process.pid
        data_dir = running.data_dir
        assert running.log_file.is_file()
    assert not running.is_running()
    assert _group_is_gone(pgid, timeout=0)  # stop() returned only after the JVM had exited
    assert not data_dir.exists()
    with pytest.raises(RuntimeError, match="not running"):
        _ = running.bootstrap_servers


_DIE_WITHOUT_CLEANUP = """
import os, sys
from pathlib import Path
from devstack.kafka import KafkaBroker
broker = KafkaBroker(data_dir=Path(sys.argv[1])).start()
print(f"PGID={broker._process.pid}", flush=True)
os._exit(3)  # like SIGKILL or a CI timeout: no atexit, no stop()
"""


@pytest.mark.integration
def test_the_jvm_does_not_outlive_a_process_that_dies_without_cleanup(tmp_path: Path):
    """A test run killed hard leaves no broker behind: the JVM stops gracefully on its own."""
    child = subprocess.run(
        [sys.executable, "-c", _DIE_WITHOUT_CLEANUP, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 3, child.stderr
    [pgid] = [int(line[5:]) for line in child.stdout.splitlines() if line.startswith("PGID=")]
    assert _group_is_gone(pgid, timeout=30)
    assert "shut down completely" in (tmp_path / "logs" / "server.log").read_text()


# --- jars and checksums (no broker) -------------------------------------------------------


def _fake_jars(directory: Path) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("kafka_2.13-4.1.1.jar", "kafka-clients-4.1.1.jar", "scala-library-2.13.16.jar"):
        (directory / name).write_bytes(f"PK\x03\x04 pretend jar {name}".encode())
    return hash_directory(directory)


def test_a_tampered_jar_is_rejected_by_name(tmp_path: Path):
    lib = tmp_path / "lib"
    expected = parse_checksums(format_checksums(_fake_jars(lib)))
    verify_jars(lib, expected)  # the untouched copy passes

    with (lib / "kafka-clients-4.1.1.jar").open("ab") as jar:
        jar.write(b"\x00")

    with pytest.raises(KafkaChecksumError, match=r"kafka-clients-4\.1\.1\.jar") as caught:
        verify_jars(lib, expected)
    assert caught.value.mismatched == ("kafka-clients-4.1.1.jar",)
    assert (caught.value.missing, caught.value.unexpected) == ((), ())


def test_a_missing_or_extra_jar_is_rejected_by_name(tmp_path: Path):
    lib = tmp_path / "lib"
    expected = _fake_jars(lib)
    (lib / "scala-library-2.13.16.jar").unlink()
    (lib / "evil-1.0.jar").write_bytes(b"PK")

    with pytest.raises(KafkaChecksumError) as caught:
        verify_jars(lib, expected)
    assert caught.value.missing == ("scala-library-2.13.16.jar",)
    assert caught.value.unexpected == ("evil-1.0.jar",)
    assert "evil-1.0.jar" in str(caught.value)


def test_the_committed_checksum_list_pins_the_broker_and_its_logging():
    names = load_checksums().keys()
    assert {f"kafka_2.13-{KAFKA_VERSION}.jar", f"kafka-clients-{KAFKA_VERSION}.jar"} <= names
    assert "log4j-slf4j-impl-2.24.3.jar" in names
    assert not [name for name in names if "reload4j" in name]


def test_a_malformed_checksum_line_is_reported_with_its_number():
    with pytest.raises(KafkaDistributionError, match="line 2"):
        parse_checksums(f"{'a' * 64}  one.jar\nnot a checksum line\n")


def test_jars_are_fetched_once_then_served_from_the_cache(tmp_path: Path):
    source = _fake_jars(tmp_path / "source")
    fetches: list[Path] = []

    def fetch(destination: Path) -> None:
        fetches.append(destination)
        _fake_jars(destination)

    first = ensure_kafka_jars(tmp_path / "cache", fetch=fetch, checksums=source)
    second = ensure_kafka_jars(tmp_path / "cache", fetch=fetch, checksums=source)

    assert first == second == tmp_path / "cache" / "kafka" / KAFKA_VERSION / "lib"
    assert len(fetches) == 1
    assert hash_directory(first) == source
    assert [p.name for p in first.parent.iterdir()] == ["lib"]  # no staging left behind


def test_a_download_that_fails_verification_is_never_published(tmp_path: Path):
    expected = _fake_jars(tmp_path / "source")

    def fetch_tampered(destination: Path) -> None:
        _fake_jars(destination)
        (destination / "kafka_2.13-4.1.1.jar").write_bytes(b"PK trojan")

    with pytest.raises(KafkaChecksumError, match=r"kafka_2\.13-4\.1\.1\.jar"):
        ensure_kafka_jars(tmp_path / "cache", fetch=fetch_tampered, checksums=expected)
    assert list((tmp_path / "cache" / "kafka" / KAFKA_VERSION).iterdir()) == []


def test_racing_downloads_both_end_with_the_same_verified_cache(tmp_path: Path):
    expected = _fake_jars(tmp_path / "source")
    both_fetching = threading.Barrier(2, timeout=10)

    def fetch(destination: Path) -> None:
        _fake_jars(destination)
        both_fetching.wait()  # neither has published yet: a real race on the rename

    results: list[Path] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(ensure_kafka_jars(tmp_path / "cache", fetch=fetch, checksums=expected))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert results[0] == results[1]
    verify_jars(results[0], expected)
    assert [p.name for p in results[0].parent.iterdir()] == ["lib"]


# --- which Kafka ------------------------------------------------------------------------


def _docker(answer: bool):
    def reachable() -> bool:
        return answer

    return reachable


@pytest.mark.parametrize(
    ("environ", "docker", "backend"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}, True, KafkaBackend.EXTERNAL),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "EMAIL_CHANNELS_USE_TESTCONTAINERS": "1"},
            True,
            KafkaBackend.EXTERNAL,
        ),
        ({"EMAIL_CHANNELS_USE_TESTCONTAINERS": "1"}, False, KafkaBackend.CONTAINER),
        ({"EMAIL_CHANNELS_USE_TESTCONTAINERS": "0"}, True, KafkaBackend.LOCAL),
        ({}, True, KafkaBackend.CONTAINER),
        ({}, False, KafkaBackend.LOCAL),
        ({"KAFKA_BOOTSTRAP_SERVERS": "  "}, False, KafkaBackend.LOCAL),
    ],
)
def test_backend_selection_policy(environ, docker, backend):
    assert choose_kafka_backend(environ, docker_reachable=_docker(docker)) is backend


def test_an_unclear_testcontainers_flag_is_refused():
    with pytest.raises(ValueError, match="EMAIL_CHANNELS_USE_TESTCONTAINERS"):
        choose_kafka_backend({"EMAIL_CHANNELS_USE_TESTCONTAINERS": "maybe"})


def test_an_external_cluster_is_used_as_given_and_nothing_is_started():
    with running_kafka(environ={"KAFKA_BOOTSTRAP_SERVERS": " a:9092,b:9092 "}) as kafka:
        assert (kafka.bootstrap_servers, kafka.version) == ("a:9092,b:9092", "external")


def test_the_container_gets_the_same_settings_in_the_images_variable_names():
    environ = container_environment(40123)
    assert environ["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://127.0.0.1:40123"
    assert environ["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert environ["KAFKA_LOG_CLEANER_DEDUPE_BUFFER_SIZE"] == str(16 * 1024 * 1024)
    assert environ["CLUSTER_ID"]
