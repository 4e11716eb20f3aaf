"""SenderSettings: SENDER_* for the service, KAFKA_* and EMAIL_CHANNELS_* from their own envs."""

from __future__ import annotations

from sender.settings import SenderSettings


def test_reads_its_own_and_the_shared_environment(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9092")
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("EMAIL_CHANNELS_ALLOWED_HOSTS", "10.0.0.0/8")
    monkeypatch.setenv("SENDER_SMTP_TIMEOUT", "15")
    monkeypatch.setenv("SENDER_RETRY_ATTEMPTS", "7")

    settings = SenderSettings()

    assert settings.kafka.bootstrap_servers == "kafka-0:9092"
    assert settings.common.allowed_hosts == "10.0.0.0/8"
    assert settings.smtp_timeout == 15
    assert settings.group_id == "prod.email-sender"
    assert settings.retry_policy.attempts == 7


def test_nested_override_with_double_underscore(monkeypatch):
    monkeypatch.setenv("SENDER_KAFKA__TOPIC_PREFIX", "only-sender.")
    assert SenderSettings().group_id == "only-sender.email-sender"
