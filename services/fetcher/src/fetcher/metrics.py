"""Prometheus metrics of the fetcher (served on EMAIL_CHANNELS_METRICS_PORT when set).

No channel id in labels: a deployment may hold thousands of channels, and the per-channel
story is in the logs (bound ``channel_id``) and on email.channel-status.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_FETCHED = Counter(
    "email_fetcher_messages_fetched_total",
    "Messages published to email.raw (Kafka acknowledged), by protocol and where the MIME went",
    ["protocol", "storage"],
)
BYTES_FETCHED = Counter(
    "email_fetcher_bytes_fetched_total",
    "Raw MIME bytes published to email.raw, by protocol",
    ["protocol"],
)
ERRORS = Counter(
    "email_fetcher_errors_total",
    "Channel failures by error kind (TransientError, ChannelMisconfigured, ...) and failing step",
    ["kind", "step"],
)
UIDVALIDITY_RESETS = Counter(
    "email_fetcher_uidvalidity_resets_total",
    "IMAP folders whose UIDVALIDITY changed, so their cursor was reset",
)
MESSAGE_SECONDS = Histogram(
    "email_fetcher_message_seconds",
    "Time from starting to download a message to its cursor being stored",
    ["protocol"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
WORKERS = Gauge(
    "email_fetcher_workers",
    "Channel workers running on this instance",
)
PARTITIONS = Gauge(
    "email_fetcher_partitions_owned",
    "Partitions of email.channels assigned to this instance",
)
SKIPPED = Counter(
    "email_fetcher_messages_skipped_total",
    "Messages passed without publishing: vanished, or not addressed to a recipient-only channel",
    ["protocol", "outcome"],
)
DEAD_LETTERS = Counter(
    "email_fetcher_dead_letters_total",
    "Messages left on the server and sent to email.dlq (oversize, unreadable)",
    ["protocol", "reason"],
)
