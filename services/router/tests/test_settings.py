"""Router settings: ROUTER_* for the router, KAFKA_* and EMAIL_CHANNELS_* shared with all."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.settings import RouterSettings

if TYPE_CHECKING:
    import pytest


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("EMAIL_CHANNELS_BLOB_STORE_URL", "s3://mail-blobs/raw")
    monkeypatch.setenv("ROUTER_WEB_PORT", "6070")
    monkeypatch.setenv("ROUTER_RETRY_ATTEMPTS", "12")
    settings = RouterSettings()
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.app_id == "prod.email-router"
    assert settings.common.blob_store_url == "s3://mail-blobs/raw"
    assert settings.web_port == 6070
    assert settings.retry_attempts == 12


def test_defaults_retry_transient_faults_until_they_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROUTER_WEB_PORT", "ROUTER_RETRY_ATTEMPTS", "KAFKA_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    settings = RouterSettings()
    assert settings.retry_attempts is None
    assert settings.web_port is None
    assert settings.ensure_topics
    assert settings.app_id == "email-router"
