"""The topic registry: every topic of the contract (design.md §3), its key, cleanup and model.

Names take a configurable prefix (``KAFKA_TOPIC_PREFIX``) so several deployments, or several
tests, share one cluster without seeing each other's data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Cleanup = Literal["compact", "delete"]


class Topic(StrEnum):
    """Logical topic names, before the prefix."""

    CHANNELS = "email.channels"
    FILTERS = "email.filters"
    CAMPAIGNS = "email.campaigns"
    API_TOKENS = "email.api-tokens"
    CHANNEL_STATUS = "email.channel-status"
    FETCH_CURSORS = "email.fetch-cursors"
    RAW = "email.raw"
    ROUTED = "email.routed"
    OUTBOUND = "email.outbound"
    DELIVERY = "email.delivery"
    DLQ = "email.dlq"
    ROUTER_STATE = "email.router-state"


@dataclass(frozen=True)
class TopicSpec:
    """What a topic holds and how the broker keeps it."""

    topic: Topic
    key: str
    cleanup: Cleanup
    model: str
    description: str
    co_partitioned_with: Topic | None = None

    @property
    def configs(self) -> dict[str, str]:
        """Topic-level configs set at creation (and checked by ``ensure_topics``)."""
        if self.cleanup == "compact":
            return {
                "cleanup.policy": "compact",
                "min.compaction.lag.ms": "0",
                "segment.ms": str(6 * 60 * 60 * 1000),
            }
        return {"cleanup.policy": "delete"}


SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(
        Topic.CHANNELS,
        "channel id",
        "compact",
        "ChannelConfig",
        "channel config (secrets encrypted), tombstone on delete",
    ),
    TopicSpec(
        Topic.FILTERS,
        "channel id",
        "compact",
        "ChannelFilters",
        "the channel's ordered filter list",
    ),
    TopicSpec(Topic.CAMPAIGNS, "campaign id", "compact", "Campaign", "campaign id and name"),
    TopicSpec(
        Topic.API_TOKENS,
        "token id",
        "compact",
        "ApiToken",
        "config-api's static API tokens (hashed), tombstone on revoke",
    ),
    TopicSpec(
        Topic.CHANNEL_STATUS,
        "channel id/direction",
        "compact",
        "ChannelStatus",
        "health: active/inactive, reason, last success",
    ),
    TopicSpec(
        Topic.FETCH_CURSORS,
        "channel id",
        "compact",
        "FetchCursor",
        "per-channel fetch position; co-partitioned with the channels topic so it moves "
        "with ownership",
        co_partitioned_with=Topic.CHANNELS,
    ),
    TopicSpec(
        Topic.RAW,
        "channel id",
        "delete",
        "RawEmail",
        "one fetched message: source identity, metadata, raw MIME inline or by reference",
    ),
    TopicSpec(
        Topic.ROUTED, "conversation id", "delete", "RoutedEmail", "parsed message + campaign + why"
    ),
    TopicSpec(
        Topic.OUTBOUND,
        "conversation id",
        "delete",
        "OutboundEmail",
        "reply/new mail to send from a channel, with idempotency key",
    ),
    TopicSpec(
        Topic.DELIVERY,
        "outbound id",
        "delete",
        "DeliveryEvent",
        "sent / deferred / failed / rejected, with server response",
    ),
    TopicSpec(
        Topic.DLQ, "original key", "delete", "DeadLetter", "poison record + error class + stage"
    ),
    TopicSpec(
        Topic.ROUTER_STATE,
        "email/<email id> or sent/<outbound id>",
        "compact",
        "RouterMark",
        "internal to the router, written in its routing transactions: each routed email's "
        "id, Message-ID, content hash, conversation and campaign (duplicates, thread "
        "affinity); also the Message-IDs of sent mail (from email.delivery)",
    ),
)


@dataclass(frozen=True)
class TopicNames:
    """Full topic names for one deployment: the logical name behind a prefix."""

    prefix: str = ""

    def __call__(self, topic: Topic) -> str:
        return f"{self.prefix}{topic.value}"

    @property
    def channels(self) -> str:
        return self(Topic.CHANNELS)

    @property
    def filters(self) -> str:
        return self(Topic.FILTERS)

    @property
    def campaigns(self) -> str:
        return self(Topic.CAMPAIGNS)

    @property
    def api_tokens(self) -> str:
        return self(Topic.API_TOKENS)

    @property
    def channel_status(self) -> str:
        return self(Topic.CHANNEL_STATUS)

    @property
    def fetch_cursors(self) -> str:
        return self(Topic.FETCH_CURSORS)

    @property
    def raw(self) -> str:
        return self(Topic.RAW)

    @property
    def routed(self) -> str:
        return self(Topic.ROUTED)

    @property
    def outbound(self) -> str:
        return self(Topic.OUTBOUND)

    @property
    def delivery(self) -> str:
        return self(Topic.DELIVERY)

    @property
    def dlq(self) -> str:
        return self(Topic.DLQ)

    @property
    def router_state(self) -> str:
        return self(Topic.ROUTER_STATE)

    def all(self) -> dict[str, TopicSpec]:
        """Full name -> spec, for every topic of the contract."""
        return {self(spec.topic): spec for spec in SPECS}


def manifest() -> dict[str, list[dict[str, object]]]:
    """The registry as data: the Helm chart's ``files/topics.json`` (Strimzi KafkaTopic
    resources) is generated from it by ``make schemas``, and a test fails when they differ."""
    return {
        "topics": [
            {
                "name": spec.topic.value,
                "key": spec.key,
                "cleanup": spec.cleanup,
                "model": spec.model,
                "description": spec.description,
                "configs": spec.configs,
                "co_partitioned_with": (
                    spec.co_partitioned_with.value if spec.co_partitioned_with else None
                ),
            }
            for spec in SPECS
        ]
    }


def manifest_json() -> str:
    """:func:`manifest` as the committed JSON text (sorted keys, two-space indent)."""
    return json.dumps(manifest(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(manifest_json())
