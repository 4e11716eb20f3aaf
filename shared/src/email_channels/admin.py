"""Ensure the contract's topics exist with the right cleanup policy (idempotent).

Creates what is missing; for what exists, checks the cleanup policy and, for co-partitioned
topics, the partition count, and fails with a clear message when they are wrong (we never
silently alter a topic someone else created).

A broker answers CreateTopics before every broker's metadata cache knows the topic, so right
after a creation (ours or a concurrent one) a describe may not see it yet: the checks retry
for a few seconds and fail loudly, never pass silently, when a topic's settings stay unknown.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from email_channels.errors import PermanentError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from email_channels.settings import KafkaSettings
    from email_channels.topics import TopicSpec

log = structlog.get_logger(__name__)

SETTLE_SECONDS = 15.0
"""How long the checks wait for a just-created topic to become visible."""


class TopicMismatch(PermanentError):
    """An existing topic contradicts the contract (e.g. delete where compact is required)."""


class TopicCreationFailed(PermanentError):
    """The broker refused to create a topic (e.g. replication factor above the broker count)."""


async def ensure_topics(
    settings: KafkaSettings,
    *,
    client_id: str = "email-channels-admin",
    extra_topics: Mapping[str, TopicSpec] | None = None,
) -> None:
    """Create missing topics of the contract (and ``extra_topics``, full name -> spec, e.g. a
    service's own retry topics) and check the existing ones."""
    names = {**settings.topics.all(), **(extra_topics or {})}
    admin = AIOKafkaAdminClient(**settings.client_kwargs(), client_id=client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            await _create(admin, settings, names, missing)
        await _settled(lambda: _check_policies(admin, names))
        await _settled(lambda: _check_partitions(admin, settings, names))
    finally:
        await admin.close()


async def _create(
    admin: AIOKafkaAdminClient,
    settings: KafkaSettings,
    names: dict[str, TopicSpec],
    missing: list[str],
) -> None:
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
    created = []
    for topic_name, code, *rest in response.topic_errors:
        if not code:
            created.append(topic_name)
        elif not issubclass(for_code(code), TopicAlreadyExistsError):
            message = rest[0] if rest else ""
            raise TopicCreationFailed(
                f"cannot create topic {topic_name}: {for_code(code).__name__} {message or ''}"
            )
    if created:
        log.info("topics created", topics=created)


class _NotVisibleYet(Exception):
    pass


async def _settled(check: Callable[[], Awaitable[None]]) -> None:
    """Run ``check`` until it passes or fails for good; retry while topics are not visible."""
    deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
    while True:
        try:
            await check()
        except _NotVisibleYet as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise TopicMismatch(f"cannot read the settings of topic {exc}") from exc
            await asyncio.sleep(0.25)
        else:
            return


async def _check_policies(admin: AIOKafkaAdminClient, names: dict[str, TopicSpec]) -> None:
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None}) for name in names]
    )
    seen: set[str] = set()
    for response in responses:
        for code, _message, _rtype, name, entries, *_ in response.resources:
            policy = next((entry[1] for entry in entries if entry[0] == "cleanup.policy"), None)
            if code or policy is None:
                raise _NotVisibleYet(name)
            seen.add(name)
            wanted = names[name].cleanup
            if wanted not in policy.split(","):
                raise TopicMismatch(
                    f"topic {name} has cleanup.policy={policy}, the contract needs {wanted}"
                )
    if unseen := set(names) - seen:
        raise _NotVisibleYet(min(unseen))


async def _check_partitions(
    admin: AIOKafkaAdminClient, settings: KafkaSettings, names: dict[str, TopicSpec]
) -> None:
    described = await admin.describe_topics(list(names))
    partitions: dict[str, int] = {}
    for topic in described:
        if topic["error_code"] or not topic["partitions"]:
            raise _NotVisibleYet(topic["topic"])
        partitions[topic["topic"]] = len(topic["partitions"])
    for name, spec in names.items():
        if spec.co_partitioned_with is None:
            continue
        other = settings.topics(spec.co_partitioned_with)
        if partitions.get(name) != partitions.get(other):
            raise TopicMismatch(
                f"topic {name} must have as many partitions as {other} "
                f"({partitions.get(name)} != {partitions.get(other)})"
            )
