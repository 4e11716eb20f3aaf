"""Ensure the contract's topics exist with the right cleanup policy (idempotent).

Creates what is missing; for what exists, checks the cleanup policy and, for co-partitioned
topics, the partition count, and fails with a clear message when they are wrong (we never
silently alter a topic someone else created).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from email_channels.errors import PermanentError
from email_channels.topics import SPEC_BY_TOPIC

if TYPE_CHECKING:
    from email_channels.settings import KafkaSettings

log = structlog.get_logger(__name__)


class TopicMismatch(PermanentError):
    """An existing topic contradicts the contract (e.g. delete where compact is required)."""


async def ensure_topics(
    settings: KafkaSettings, *, client_id: str = "email-channels-admin"
) -> None:
    """Create missing topics of the contract and check the existing ones."""
    names = settings.topics.all()
    admin = AIOKafkaAdminClient(**settings.client_kwargs(), client_id=client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=name,
                        num_partitions=settings.partitions,
                        replication_factor=settings.replication_factor,
                        topic_configs=names[name].configs,
                    )
                    for name in missing
                ]
            )
            for topic_name, code, *rest in response.topic_errors:
                if code and not isinstance(for_code(code)(), TopicAlreadyExistsError):
                    message = rest[0] if rest else ""
                    raise TopicMismatch(
                        f"cannot create topic {topic_name}: {for_code(code).__name__} {message}"
                    )
            log.info("topics created", topics=missing)
        await _check(admin, names)
    finally:
        await admin.close()


async def _check(admin: AIOKafkaAdminClient, names: dict[str, Any]) -> None:
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None}) for name in names]
    )
    for response in responses:
        for resource in response.resources:
            _code, _message, _rtype, name, entries = resource[:5]
            policy = next((entry[1] for entry in entries if entry[0] == "cleanup.policy"), None)
            wanted = names[name].cleanup
            if policy is not None and wanted not in policy.split(","):
                raise TopicMismatch(
                    f"topic {name} has cleanup.policy={policy}, the contract needs {wanted}"
                )
    partitions = {
        topic["topic"]: len(topic["partitions"])
        for topic in await admin.describe_topics(list(names))
    }
    for name, spec in names.items():
        if spec.co_partitioned_with is None:
            continue
        other = next(
            n for n, s in names.items() if s.topic == SPEC_BY_TOPIC[spec.co_partitioned_with].topic
        )
        if partitions.get(name) != partitions.get(other):
            raise TopicMismatch(
                f"topic {name} must have as many partitions as {other} "
                f"({partitions.get(name)} != {partitions.get(other)})"
            )
