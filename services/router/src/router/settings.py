"""Router settings: ``ROUTER_*`` environment variables (nested with ``__``).

Kafka and the common settings come from their own environments (``KAFKA_*``,
``EMAIL_CHANNELS_*``) so one set of variables configures every service.
"""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from email_channels.settings import CommonSettings, KafkaSettings
from router.handlers import MAX_ROUTED_BYTES


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ROUTER_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    common: CommonSettings = Field(default_factory=CommonSettings)

    app_name: str = Field(
        default="email-router",
        description="faust app id and consumer group, behind the topic prefix",
    )
    ensure_topics: bool = Field(
        default=True, description="create/check the contract's topics at start-up"
    )
    instance_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description=(
            "this instance's name, stable across its restarts (e.g. a StatefulSet pod name): "
            "the transactional id is <app id>-<instance id>, so a restarted instance aborts "
            "what its predecessor left open at once"
        ),
    )
    batch_max_records: int = Field(
        default=500, ge=1, description="email.raw records per routing transaction (at most)"
    )
    prefetch_concurrency: int = Field(
        default=8, ge=1, description="records of a batch read, stored and parsed at once"
    )
    transaction_timeout_s: float = Field(
        default=60.0,
        ge=1,
        description="the broker aborts a routing transaction left open this long (a crash)",
    )
    session_timeout_s: float = Field(
        default=10.0,
        ge=6,
        description="consumer group session timeout (a dead instance's "
        "partitions move after this long)",
    )
    duplicate_window_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="a routed Message-ID with the same content is a duplicate this long",
    )
    compression: Literal["gzip", "none"] = Field(
        default="gzip", description="compression of the records the router produces"
    )
    retry_attempts: int | None = Field(
        default=None,
        ge=1,
        description=(
            "attempts for a transient failure before the record is dead-lettered "
            "(retriable=True); unset = retry until it succeeds (lag shows the stall)"
        ),
    )
    retry_first_backoff_seconds: float = Field(default=0.2, gt=0)
    retry_max_backoff_seconds: float = Field(default=30.0, gt=0)
    config_start_timeout_seconds: float = Field(
        default=60.0, gt=0, description="time to read channels and filters at start-up"
    )
    config_catch_up_timeout_seconds: float = Field(
        default=10.0, gt=0, description="time to catch up when a record names an unknown channel"
    )
    max_routed_bytes: int = Field(
        default=MAX_ROUTED_BYTES,
        ge=10_000,
        description="bodies are truncated so a routed record stays below this size",
    )

    @property
    def app_id(self) -> str:
        return f"{self.kafka.topic_prefix}{self.app_name}"
