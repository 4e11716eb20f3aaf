"""Sender settings: ``SENDER_*`` (nested with ``__``), plus the shared KAFKA_* and
EMAIL_CHANNELS_* groups, each read from its own environment variables.

Built once in :func:`sender.__main__.main` and passed down; there is no settings global.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from email_channels.consume import RetryPolicy
from email_channels.settings import CommonSettings, Compression, KafkaSettings
from sender.attachments import DEFAULT_MAX_TOTAL_BYTES
from sender.retries import DEFAULT_DELAYS_S
from sender.transports.pool import PoolLimits


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
        default=5,
        ge=1,
        description="in-place tries of a record whose handling failed transiently (a Kafka "
        "publish, a send at the last retry level) before giving up",
    )
    retry_first_backoff: float = Field(default=1.0, gt=0, description="seconds")
    retry_max_backoff: float = Field(default=30.0, gt=0, description="seconds")
    retry_delays_s: tuple[float, ...] = Field(
        default=DEFAULT_DELAYS_S,
        min_length=0,
        description="delay of each retry topic level after a transient send failure (JSON "
        "list); 'failed' after the last",
    )
    max_in_flight: int = Field(
        default=256, ge=1, description="outbound records handled at once (all channels)"
    )
    pool_max_sessions: int = Field(
        default=4, ge=1, description="SMTP sessions open at once per channel"
    )
    pool_idle_s: float = Field(default=30.0, gt=0, description="close a session idle this long")
    pool_max_admitted: int = Field(
        default=32,
        ge=1,
        description="messages per channel whose intent may be recorded at once (sending or "
        "waiting for a session; their intents share Kafka produce requests); bounds the "
        "'unknown' outcomes of the channel after a crash",
    )
    connect_cooldown_s: float = Field(
        default=10.0,
        ge=0,
        description="after a channel's server could not be reached, send its mail straight to "
        "the retry topics for this long instead of trying to connect",
    )
    group_session_timeout_s: float = Field(
        default=10.0,
        ge=1,
        description="Kafka consumer-group session timeout: how soon the partitions of a "
        "crashed sender move to another replica",
    )
    graph_throttle_wait_s: float = Field(
        default=5.0,
        ge=0,
        description="a Graph Retry-After (429/503) up to this long is waited out in place for "
        "that mailbox; a longer one sends the message to the retry topics",
    )
    producer_compression: Compression = Field(
        default=Compression.NONE,
        description="compression of what the sender produces (delivery events, retries, dead "
        "letters): delivery events are a few hundred bytes and go out in small batches, where "
        "gzip costs the sender and every reader of email.delivery more CPU than it saves",
    )
    session_wait_s: float = Field(
        default=30.0, gt=0, description="wait at most this long for a free session of a channel"
    )

    @property
    def group_id(self) -> str:
        return f"{self.kafka.topic_prefix}{self.group}"

    @property
    def pool_limits(self) -> PoolLimits:
        return PoolLimits(
            max_sessions=self.pool_max_sessions,
            max_admitted=max(self.pool_max_admitted, self.pool_max_sessions),
            idle_s=self.pool_idle_s,
            cooldown_s=self.connect_cooldown_s,
            acquire_wait_s=self.session_wait_s,
        )

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.retry_attempts,
            first_backoff=self.retry_first_backoff,
            max_backoff=self.retry_max_backoff,
        )
