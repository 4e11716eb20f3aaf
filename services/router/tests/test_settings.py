"""Router settings: ROUTER_* for the router, KAFKA_* and EMAIL_CHANNELS_* shared with all."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from router.parse_limits import DEFAULT_LIMITS
from router.settings import RouterSettings


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


def test_parse_limits_and_mark_bounds_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ROUTER_PARSE_* become the parser's bounds; ROUTER_MARKS_* bound the table of marks."""
    monkeypatch.setenv("ROUTER_PARSE_MAX_PARTS", "50")
    monkeypatch.setenv("ROUTER_PARSE_MAX_DEPTH", "8")
    monkeypatch.setenv("ROUTER_PARSE_MAX_HEADER_BYTES", "65536")
    monkeypatch.setenv("ROUTER_PARSE_MAX_DECODED_BYTES", "4000000")
    monkeypatch.setenv("ROUTER_PARSE_TIME_BUDGET_S", "0.25")
    monkeypatch.setenv("ROUTER_MARKS_MAX_ENTRIES", "5000")
    monkeypatch.setenv("ROUTER_MARKS_RETENTION_S", "864000")
    settings = RouterSettings()
    limits = settings.parse_limits
    assert (limits.max_parts, limits.max_depth, limits.max_header_bytes) == (50, 8, 65536)
    assert (limits.max_decoded_bytes, limits.max_parse_s) == (4_000_000, 0.25)
    assert limits.max_html_chars == DEFAULT_LIMITS.max_html_chars
    assert (settings.marks_max_entries, settings.marks_retention_s) == (5000, 864000)


def test_a_marks_retention_shorter_than_the_duplicate_window_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error names both settings."""
    monkeypatch.setenv("ROUTER_MARKS_RETENTION_S", "3600")
    with pytest.raises(ValidationError, match="marks_retention_s must be >= duplicate_window_s"):
        RouterSettings()
