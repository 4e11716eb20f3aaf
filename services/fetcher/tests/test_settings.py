"""Settings come from FETCHER_*, KAFKA_* and EMAIL_CHANNELS_* variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from email_channels.errors import ChannelMisconfigured
from email_channels.events import ChannelConfig
from fetcher.settings import FetcherSettings
from fetcher.sources import SourceRegistry


def test_each_group_reads_its_own_prefix(monkeypatch):
    monkeypatch.setenv("FETCHER_POLL_INTERVAL_S", "15")
    monkeypatch.setenv("FETCHER_INSTANCE_ID", "fetcher-0")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("EMAIL_CHANNELS_ALLOWED_HOSTS", "10.0.0.0/8")
    settings = FetcherSettings()
    assert settings.poll_interval_s == 15
    assert settings.instance_id == "fetcher-0"
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.common.allowed_hosts == "10.0.0.0/8"
    assert settings.group_id == "prod.email-fetcher"
    assert settings.idle_renew_s < 29 * 60


def test_idle_renewal_must_stay_below_the_29_minute_limit(monkeypatch):
    monkeypatch.setenv("FETCHER_IDLE_RENEW_S", str(30 * 60))
    with pytest.raises(ValidationError, match="idle_renew_s"):
        FetcherSettings()


def test_registry_refuses_kinds_it_has_no_source_for():
    registry = SourceRegistry({"imap": lambda channel: None})  # type: ignore[arg-type,return-value]
    no_inbound = ChannelConfig(id="c", name="c", enabled=True)
    assert not registry.supports(no_inbound)
    with pytest.raises(ChannelMisconfigured) as caught:
        registry(no_inbound)
    assert caught.value.step == "config"
