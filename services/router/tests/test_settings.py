"""Router settings: ROUTER_* for the router, KAFKA_* and EMAIL_CHANNELS_* shared with all."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from router.settings import RouterSettings

if TYPE_CHECKING:
    import pytest


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every service reads the same KAFKA_* and EMAIL_CHANNELS_* variables."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("EMAIL_CHANNELS_BLOB_STORE_URL", "s3://mail-blobs/raw")
    monkeypatch.setenv("ROUTER_INSTANCE_ID", "router-3")
    monkeypatch.setenv("ROUTER_RETRY_ATTEMPTS", "12")
    monkeypatch.setenv("ROUTER_BATCH_MAX_RECORDS", "50")
    settings = RouterSettings()
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.app_id == "prod.email-router"
    assert settings.common.blob_store_url == "s3://mail-blobs/raw"
    assert settings.instance_id == "router-3"
    assert settings.retry_attempts == 12
    assert settings.batch_max_records == 50


def test_defaults_retry_transient_faults_until_they_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset retry attempts = retry until it passes; the instance is named after the host."""
    for name in ("ROUTER_INSTANCE_ID", "ROUTER_RETRY_ATTEMPTS", "KAFKA_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    settings = RouterSettings()
    assert settings.retry_attempts is None
    assert settings.instance_id == socket.gethostname()
    assert settings.ensure_topics
    assert settings.app_id == "email-router"
