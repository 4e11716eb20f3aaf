"""pytest fixtures for real infrastructure: Apache Kafka, Dovecot, an SMTP server.

Loaded by the repository's root ``conftest.py``. Every test gets its own topic prefix (and so
its own topics and consumer groups) and its own mailbox user, so tests never see each other's
data. ``KAFKA_BOOTSTRAP_SERVERS`` set means: use that cluster, start nothing.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from devstack.certs import TestPki, make_test_pki
from devstack.dovecot import Dovecot
from devstack.graph import LocalGraph
from devstack.kafka import running_kafka
from devstack.ports import free_port
from devstack.processes import ServiceProcesses
from devstack.smtp import SmtpServer
from email_channels.admin import ensure_topics
from email_channels.secretbox import SecretBox
from email_channels.settings import KafkaSettings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from devstack.kafka import KafkaEndpoint

_KAFKA: dict[str, str] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long fault-injection scenarios (marker ``chaos``) run only under ``make chaos``
    (EMAIL_CHANNELS_CHAOS=1); ``make test`` runs their short versions. Deselected, not skipped."""
    if os.environ.get("EMAIL_CHANNELS_CHAOS") == "1":
        return
    chaos = [item for item in items if item.get_closest_marker("chaos") is not None]
    if chaos:
        config.hook.pytest_deselected(items=chaos)
        items[:] = [item for item in items if item.get_closest_marker("chaos") is None]


def pytest_report_header(config: pytest.Config) -> list[str]:  # noqa: ARG001
    return ["infrastructure: real Apache Kafka (KRaft), Dovecot, aiosmtpd — started on demand"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _KAFKA:
        terminalreporter.write_line(
            f"Kafka used by this run: {_KAFKA['version']} at {_KAFKA['bootstrap']}"
        )


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaEndpoint]:
    """A real Kafka broker for the whole session (or the cluster in KAFKA_BOOTSTRAP_SERVERS)."""
    with running_kafka() as endpoint:
        _KAFKA.update(version=endpoint.version, bootstrap=endpoint.bootstrap_servers)
        print(f"\nKafka: Apache Kafka {endpoint.version} at {endpoint.bootstrap_servers}")  # noqa: T201
        yield endpoint


@pytest.fixture
def topic_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def kafka_settings(kafka: KafkaEndpoint, topic_prefix: str) -> KafkaSettings:
    """Settings pointing at the test broker, with this test's own topics already created."""
    settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap_servers, topic_prefix=topic_prefix, partitions=3
    )
    await ensure_topics(settings)
    return settings


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def secret_keys() -> str:
    """A keyring value for EMAIL_CHANNELS_SECRET_KEYS."""
    return f"test:{SecretBox.generate_key()}"


@pytest.fixture(scope="session")
def secret_box(secret_keys: str) -> SecretBox:
    return SecretBox.from_env(secret_keys)


@pytest.fixture(scope="session")
def dovecot(pki: TestPki) -> Iterator[Dovecot]:
    # Dovecot gets its own work dir: pytest's temp dirs are not traversable by the mail user.
    with Dovecot(pki=pki) as server:
        yield server


E2E_ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"  # noqa: S105 - a local test token
"""The config-api operator token of :func:`four_services` (send it as a Bearer token)."""


@pytest.fixture
def four_services(
    kafka_settings: KafkaSettings, secret_keys: str, pki: TestPki, tmp_path: Path
) -> Iterator[tuple[ServiceProcesses, str]]:
    """The four services as processes on this test's topics; yields them and config-api's URL.
    Signed in with :data:`E2E_ADMIN_TOKEN`; every service must stop cleanly at the end."""
    port = free_port()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "KAFKA_PARTITIONS": str(kafka_settings.partitions),
        "EMAIL_CHANNELS_SECRET_KEYS": secret_keys,
        "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{tmp_path / 'blobs'}",
        "EMAIL_CHANNELS_ALLOWED_HOSTS": "127.0.0.1",
        "EMAIL_CHANNELS_CA_FILE": str(pki.ca_cert),
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
        "CONFIG_API_HOST": "127.0.0.1",
        "CONFIG_API_PORT": str(port),
        "CONFIG_API_ADMIN_TOKEN": E2E_ADMIN_TOKEN,
    }
    processes = ServiceProcesses(env, log_dir=tmp_path / "logs")
    processes.start()
    try:
        processes.wait_http_ready(f"http://127.0.0.1:{port}/readyz")
        yield processes, f"http://127.0.0.1:{port}"
    finally:
        codes = processes.stop()
    assert all(code == 0 for code in codes.values()), f"unclean stop: {codes}"


class MailUser:
    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password
        self.address = f"{user}@example.test"


@pytest.fixture
def mail_user(dovecot: Dovecot) -> MailUser:
    """A fresh mailbox user for this test."""
    user = MailUser(f"u{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(12))
    dovecot.add_user(user.user, user.password)
    return user


@pytest.fixture(scope="session")
def smtp_server(pki: TestPki) -> Iterator[SmtpServer]:
    """STARTTLS + AUTH, advertising PIPELINING as production MTAs do (Postfix, Exchange)."""
    with SmtpServer(pki, credentials=("sender", "sender-secret"), pipelining=True) as server:
        yield server


@pytest.fixture
def local_graph(pki: TestPki) -> Iterator[LocalGraph]:
    """A fresh local HTTPS stand-in for Microsoft's identity platform and Graph (this test's)."""
    with LocalGraph(pki) as graph:
        yield graph


@pytest.fixture
async def wait_until() -> Any:
    """``await wait_until(predicate, timeout=...)``: poll a condition in integration tests."""

    async def _wait(predicate: Any, *, timeout: float = 30.0, interval: float = 0.2) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            await asyncio.sleep(interval)

    return _wait


__all__ = ["E2E_ADMIN_TOKEN", "MailUser"]
