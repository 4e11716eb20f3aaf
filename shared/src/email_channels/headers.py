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

REPLAY_HEADER: Final = "dlq-replay-of"
"""Kafka record header on a record re-published from ``email.dlq`` (``email-channels dlq
replay``): ``<dlq topic>/<partition>/<offset>`` of the dead letter it came from."""
