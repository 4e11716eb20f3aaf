"""Fetcher settings: ``FETCHER_*`` variables, plus the shared ``KAFKA_*`` and
``EMAIL_CHANNELS_*`` ones (each nested group reads its own prefix).

Built once in ``main()`` and passed down; there is no module-level settings object.
"""

from __future__ import annotations

import socket
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from email_channels.settings import CommonSettings, Compression, KafkaSettings

Seconds = Annotated[float, Field(gt=0)]


class FetcherSettings(BaseSettings):
    """``FETCHER_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="FETCHER_", extra="ignore")

    instance_id: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        default_factory=socket.gethostname,
        description="who reports channel status (ChannelStatus.reported_by); the pod name",
    )
    ensure_topics: bool = Field(
        default=True,
        description="create missing topics at start-up and check co-partitioning of the cursors",
    )

    # --- waiting for mail ---
    poll_interval_s: Seconds = Field(
        default=60.0, description="how often to look for new mail when the server has no IDLE"
    )
    imap_idle: bool = Field(
        default=True,
        description="use IMAP IDLE when the server offers it (off: poll every poll_interval_s)",
    )
    idle_renew_s: Annotated[float, Field(gt=0, lt=29 * 60)] = Field(
        default=25 * 60.0,
        description="re-issue IMAP IDLE after this long (servers may drop it after 30 minutes)",
    )

    hot_window_s: Annotated[float, Field(ge=0, le=600)] = Field(
        default=10.0,
        description="after mail arrived, poll with NOOP every hot_poll_s for this long before "
        "going back to IDLE: Dovecot pushes a change to IDLE clients 0.5 s after it "
        "(NOTIFY_DELAY_MSECS), a NOOP makes it look at once (other servers differ); 0: off",
    )
    hot_poll_s: Annotated[float, Field(ge=0.01, le=60)] = Field(
        default=0.05, description="NOOP interval while a mailbox is hot (see hot_window_s)"
    )

    # --- talking to mail servers ---
    command_timeout_s: Seconds = Field(
        default=30.0, description="bound of connecting, logging in and each IMAP command"
    )
    fetch_timeout_s: Seconds = Field(
        default=300.0, description="bound of downloading one message (20 MB on a slow link)"
    )

    # --- how much at once ---
    batch_size: Annotated[int, Field(ge=1, le=5000)] = Field(
        default=200,
        description="messages per batch: one download, one round of Kafka acks, one settle "
        "command and one cursor record per batch (a crash re-fetches at most one batch)",
    )
    batch_bytes: Annotated[int, Field(ge=64 * 1024)] = Field(
        default=16 * 1024 * 1024, description="bodies downloaded by one command, at most"
    )
    max_message_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=50 * 1024 * 1024,
        description="larger messages are not downloaded: their headers go to email.dlq and "
        "they stay on the server",
    )
    large_message_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=1024 * 1024,
        description="messages above this are downloaded alone, at most large_downloads at once; "
        "IMAP streams them in pieces of large_chunk_bytes straight into the blob store "
        "(keep it above EMAIL_CHANNELS_INLINE_MAX_BYTES: a streamed message is always a claim "
        "check)",
    )
    large_chunk_bytes: Annotated[int, Field(ge=16 * 1024, le=64 * 1024 * 1024)] = Field(
        default=1024 * 1024,
        description="piece of a large IMAP message downloaded by one command "
        "(BODY.PEEK[]<offset.length>): the most of it held in memory at once",
    )
    large_downloads: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=4, description="concurrent downloads of large messages in this process"
    )
    unreadable_tries: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3,
        description="sessions in which a present message may fail to be read before it goes to "
        "email.dlq (and stays on the server)",
    )

    producer_batch_bytes: Annotated[int, Field(ge=16 * 1024, le=2 * 1024 * 1024)] = Field(
        default=1024 * 1024,
        description="Kafka producer batch size per partition (aiokafka's 16 KiB default holds "
        "less than one typical message)",
    )
    producer_linger_s: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0,
        description="how long the producer waits for more records before sending; the fetcher "
        "hands a whole batch over at once and waits for its acks, so waiting longer only adds "
        "latency (to every batch and every cursor record)",
    )
    producer_compression: Compression = Field(
        default=Compression.NONE,
        description="compression of email.raw records: mail is mostly base64 of already "
        "compressed attachments, on which gzip (level 9 in aiokafka) runs at ~8 MB/s and "
        "would cap the fetcher; 'gzip' trades that CPU for broker disk",
    )

    # --- failures ---
    retry_first_backoff_s: Seconds = Field(
        default=1.0, description="first wait after a transient failure (doubles each time)"
    )
    retry_max_backoff_s: Seconds = Field(
        default=300.0, description="cap of the wait between reconnects after transient failures"
    )
    misconfigured_backoff_s: Seconds = Field(
        default=300.0,
        description="wait before retrying a channel a human must fix (a config change restarts "
        "it at once)",
    )
    inactive_after_failures: Annotated[int, Field(ge=1)] = Field(
        default=3,
        description="consecutive transient failures after which the channel is reported inactive",
    )
    stop_timeout_s: Seconds = Field(
        default=20.0,
        description="on shutdown or revocation, how long a worker may finish its in-flight "
        "message before it is cancelled",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    common: CommonSettings = Field(default_factory=CommonSettings)

    @property
    def group_id(self) -> str:
        """The consumer group whose assignment of email.channels decides ownership."""
        return f"{self.kafka.topic_prefix}email-fetcher"
