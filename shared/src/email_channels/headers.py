"""Names other services depend on: Kafka record headers and the mail headers we stamp.

These are part of the contract with campaign services (the AsyncAPI document names them): one
place, imported by every service that reads or writes them, never redefined inside one service.
"""

from __future__ import annotations

from typing import Final

CAMPAIGN_HEADER: Final = "campaign-id"
"""Kafka record header on ``email.routed``: the campaign id, to filter without decoding."""

LOOP_HEADER: Final = "X-Email-Channels-Loop"
"""Mail header the sender stamps on every message the product sends; seen inbound, it is a loop."""

RETRY_LEVEL_HEADER: Final = "retry-level"
"""Kafka record header on the sender's retry topics: which delay level (1, 2, ...) the record
waits in; absent on ``email.outbound`` itself."""

RETRY_DUE_HEADER: Final = "retry-due-ms"
"""Kafka record header on the sender's retry topics: when the record is due (epoch ms)."""

ORIGINAL_TOPIC_HEADER: Final = "original-topic"
"""Kafka record header on records re-published by a stage (retry topics): the topic the record
was first written to. A DLQ replay sends a dead letter back to this topic when present, else to
its ``source_topic``."""

REPLAY_HEADER: Final = "dlq-replay-of"
"""Kafka record header set by the DLQ replay command (``email-channels dlq replay``) on a
re-published record; its value locates the dead letter it came from:
``<dlq topic>/<partition>/<offset>``. Its presence alone makes the sender send an outbound whose
earlier outcome was failed, rejected or deferred (never one that was sent or whose outcome is
unknown)."""

PUBLISHER_HEADER: Final = "publisher-instance"
"""Kafka record header on ``email.delivery``: a random id of the sender process (one life of
it) that published the event. That process already applied its own events to its ledger, so its
reader of the topic skips them without decoding; every other reader ignores the header."""
