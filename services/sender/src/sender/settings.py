"""Sender settings: ``SENDER_*`` (nested with ``__``), plus the shared KAFKA_* and
EMAIL_CHANNELS_* groups, each read from its own environment variables.

Built once in :func:`sender.__main__.main` and passed down; there is no settings global.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from email_channels.consume import RetryPolicy
from email_channels.settings import CommonSettings, KafkaSettings
from sender.attachments import DEFAULT_MAX_TOTAL_BYTES


class SenderSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SENDER_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    common: CommonSettings = Field(default_factory=CommonSettings)

    client_id: str = Field(default="email-sender", description="Kafka client id prefix")
    group: str = Field(
        default="email-sender",
        description="consumer group of email.outbound, behind the topic prefix",
    )
    ensure_topics: bool = Field(
        default=True,
        description="create missing topics at start-up (off where Strimzi manages them)",
    )
    smtp_timeout: float = Field(
        default=60.0, gt=0, description="seconds for each SMTP step (connect, command, DATA)"
    )
    local_hostname: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9.:\[\]-]+$",
        description="name sent in EHLO (default: this machine's FQDN)",
    )
    max_attachment_bytes: int = Field(default=DEFAULT_MAX_TOTAL_BYTES, ge=0)
    retry_attempts: int = Field(
        default=5, ge=1, description="tries of a transient failure before 'deferred' + email.dlq"
    )
    retry_first_backoff: float = Field(default=1.0, gt=0, description="seconds")
    retry_max_backoff: float = Field(default=30.0, gt=0, description="seconds")

    @property
    def group_id(self) -> str:
        return f"{self.kafka.topic_prefix}{self.group}"

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.retry_attempts,
            first_backoff=self.retry_first_backoff,
            max_backoff=self.retry_max_backoff,
        )
