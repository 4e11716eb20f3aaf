"""Router settings: ``ROUTER_*`` environment variables (nested with ``__``).

Kafka and the common settings come from their own environments (``KAFKA_*``,
``EMAIL_CHANNELS_*``) so one set of variables configures every service.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from email_channels.settings import CommonSettings, Compression, KafkaSettings
from router.handlers import MAX_ROUTED_BYTES, PARSE_INLINE_MAX_BYTES
from router.marks import DEFAULT_MAX_ENTRIES, DEFAULT_RETENTION
from router.parse_limits import DEFAULT_LIMITS, ParseLimits


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
    marks_retention_s: float = Field(
        default=DEFAULT_RETENTION.total_seconds(),
        gt=0,
        description=(
            "a mark (routed email id, Message-ID, conversation) stays in memory this long: "
            "re-fetches and replies older than this are not recognised; >= the duplicate window"
        ),
    )
    marks_max_entries: int = Field(
        default=DEFAULT_MAX_ENTRIES,
        ge=1_000,
        description="marks held in memory at most, oldest dropped first (~1.7 KB each)",
    )
    parse_max_parts: int = Field(
        default=DEFAULT_LIMITS.max_parts, ge=1, description="MIME parts read per message"
    )
    parse_max_depth: int = Field(
        default=DEFAULT_LIMITS.max_depth, ge=1, description="MIME nesting levels read"
    )
    parse_max_header_fields: int = Field(
        default=DEFAULT_LIMITS.max_header_fields, ge=10, description="header fields read"
    )
    parse_max_header_field_bytes: int = Field(
        default=DEFAULT_LIMITS.max_header_field_bytes,
        ge=1_000,
        description="longer header fields are cut to this size",
    )
    parse_max_header_bytes: int = Field(
        default=DEFAULT_LIMITS.max_header_bytes, ge=1_000, description="header block read"
    )
    parse_max_decoded_bytes: int = Field(
        default=DEFAULT_LIMITS.max_decoded_bytes,
        ge=1_000_000,
        description="bodies and attachments decoded per message, in total",
    )
    parse_time_budget_s: float = Field(
        default=DEFAULT_LIMITS.max_parse_s,
        gt=0,
        description="time for the part-by-part reading of one message; parts left are not read",
    )
    parse_inline_max_bytes: int = Field(
        default=PARSE_INLINE_MAX_BYTES,
        ge=0,
        description=(
            "mail up to this size is parsed on the event loop, larger mail in a worker thread"
        ),
    )
    compression: Compression = Field(
        default=Compression.ZSTD,
        description=(
            "compression of the records the router produces (zstd: a tenth of aiokafka's "
            "gzip level 9 CPU; consumers need zstd support, e.g. aiokafka with cramjam)"
        ),
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

    @model_validator(mode="after")
    def _retention_covers_the_window(self) -> Self:
        if self.marks_retention_s < self.duplicate_window_s:
            msg = (
                "marks_retention_s must be >= duplicate_window_s (a mark dropped earlier "
                "would end the duplicate window early)"
            )
            raise ValueError(msg)
        return self

    @property
    def parse_limits(self) -> ParseLimits:
        """The ``parse_*`` settings as the parser's bounds."""
        return replace(
            DEFAULT_LIMITS,
            max_parts=self.parse_max_parts,
            max_depth=self.parse_max_depth,
            max_header_fields=self.parse_max_header_fields,
            max_header_field_bytes=self.parse_max_header_field_bytes,
            max_header_bytes=self.parse_max_header_bytes,
            max_decoded_bytes=self.parse_max_decoded_bytes,
            max_parse_s=self.parse_time_budget_s,
        )

    @property
    def app_id(self) -> str:
        return f"{self.kafka.topic_prefix}{self.app_name}"
