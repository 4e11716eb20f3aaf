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

DURABLE_REPLICATION = 3
DURABLE_MIN_ISR = 2
"""Production floor (``KAFKA_REQUIRE_DURABLE_TOPICS``): with acks=all, a write survives the
loss of one broker only if it was on at least two in-sync replicas of three."""


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
        if settings.require_durable_topics:
            await _settled(lambda: _check_durability(admin, names))
    finally:
        await admin.close()


async def check_topics(
    settings: KafkaSettings, *, client_id: str = "email-channels-admin"
) -> list[str]:
    """What is wrong with the contract's topics, without changing anything (empty = all good):
    missing topics, then the first contradiction of each check ``ensure_topics`` makes."""
    names = settings.topics.all()
    admin = AIOKafkaAdminClient(**settings.client_kwargs(), client_id=client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        problems = [f"topic {name} is missing" for name in names if name not in existing]
        present = {name: spec for name, spec in names.items() if name in existing}
        checks: list[Callable[[], Awaitable[None]]] = [
            lambda: _check_policies(admin, present),
            lambda: _check_partitions(admin, settings, present),
        ]
        if settings.require_durable_topics:
            checks.append(lambda: _check_durability(admin, present))
        for check in checks if present else []:
            try:
                await _settled(check)
            except TopicMismatch as exc:
                problems.append(str(exc))
        return problems
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
                topic_configs=_creation_configs(settings, names[name]),
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


def _creation_configs(settings: KafkaSettings, spec: TopicSpec) -> dict[str, str]:
    configs = dict(spec.configs)
    if settings.min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(settings.min_insync_replicas)
    return configs


async def _check_durability(admin: AIOKafkaAdminClient, names: dict[str, TopicSpec]) -> None:
    """Production mode: every topic on >= 3 replicas with min.insync.replicas >= 2."""
    described = await admin.describe_topics(list(names))
    replication: dict[str, int] = {}
    for topic in described:
        if topic["error_code"] or not topic["partitions"]:
            raise _NotVisibleYet(topic["topic"])
        replication[topic["topic"]] = min(len(p["replicas"]) for p in topic["partitions"])
    responses = await admin.describe_configs(
        [
            ConfigResource(ConfigResourceType.TOPIC, name, {"min.insync.replicas": None})
            for name in names
        ]
    )
    min_isr: dict[str, int] = {}
    for response in responses:
        for code, _message, _rtype, name, entries, *_ in response.resources:
            value = next((e[1] for e in entries if e[0] == "min.insync.replicas"), None)
            if code or value is None:
                raise _NotVisibleYet(name)
            min_isr[name] = int(value)
    weak = [
        f"{name} (replication factor {replication.get(name)}, min.insync.replicas "
        f"{min_isr.get(name)})"
        for name in sorted(names)
        if replication.get(name, 0) < DURABLE_REPLICATION or min_isr.get(name, 0) < DURABLE_MIN_ISR
    ]
    if weak:
        raise TopicMismatch(
            f"production mode needs every topic on at least {DURABLE_REPLICATION} replicas "
            f"with min.insync.replicas at least {DURABLE_MIN_ISR}, but these are weaker: "
            + ", ".join(weak)
            + ". Fix the topics (e.g. the Strimzi KafkaTopic resources), or set "
            "KAFKA_REQUIRE_DURABLE_TOPICS=false for a local or test cluster."
        )
