"""Prometheus metrics of the sender (served on EMAIL_CHANNELS_METRICS_PORT when set)."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Histogram

DELIVERIES = Counter(
    "email_sender_deliveries_total",
    "Outbound emails by the delivery status published for them (sent, rejected, deferred, failed)",
    ["status", "transport"],
)
DUPLICATES = Counter(
    "email_sender_duplicates_total",
    "Outbound emails skipped because their outbound_id had already been sent",
)
SEND_SECONDS = Histogram(
    "email_sender_send_seconds",
    "Time to hand one message to the mail server (connect to accepted), successful sends only",
    ["transport"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


@functools.cache
def deliveries(status: str, transport: str) -> Counter:
    """The ``DELIVERIES`` child of these labels, looked up once (``labels()`` per message
    takes a lock and builds a tuple each time)."""
    return DELIVERIES.labels(status, transport)


@functools.cache
def send_seconds(transport: str) -> Histogram:
    """The ``SEND_SECONDS`` child of this transport, looked up once."""
    return SEND_SECONDS.labels(transport)
