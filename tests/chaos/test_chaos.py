"""Kill, restart and partition every part of the pipeline under load, and count every mail.

Pass figure for every scenario: 0 lost; 0 duplicates visible to consumers on email.routed
(read_committed) and at the SMTP server; every outbound id exactly one final status. The ledger
of each scenario is printed (``make chaos`` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from typing import TYPE_CHECKING

import httpx
import pytest

from devstack.chaos import (
    Ledger,
    Pipeline,
    TopicCounter,
    final_outbound_id,
    kill_at_progress,
    raw_source_key,
    routed_message_id,
    take_ledger,
    wait_for,
)
from devstack.kafka import KafkaBroker
from devstack.ports import free_ports
from email_channels.admin import ensure_topics
from email_channels.events import AfterFetch
from email_channels.settings import KafkaSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from devstack.certs import TestPki
    from devstack.dovecot import Dovecot
    from devstack.pytest_plugin import MailUser
    from devstack.smtp import SmtpServer
    from email_channels.secretbox import SecretBox

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def assert_no_loss_no_duplicates(ledger: Ledger) -> None:
    print("\n" + ledger.table())  # noqa: T201 - the ledger is the scenario's report
    assert ledger.lost_inbound == 0, "mail lost"
    assert ledger.raw_duplicates_other_id == 0, "a re-fetch got another email id"
    assert ledger.routed_duplicates == 0, "duplicates visible on email.routed"
    if ledger.left_in_mailbox is not None:
        assert ledger.left_in_mailbox == 0, "mail left on the server in delete mode"
    assert ledger.smtp_duplicates == 0, "a reply reached the SMTP server twice"
    assert ledger.no_final_status == 0, "an outbound id has no final status"
    assert ledger.conflicting_final_status == 0, "an outbound id has two final statuses"


@pytest.fixture
def pipeline(
    kafka_settings: KafkaSettings,
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    pki: TestPki,
    secret_box: SecretBox,
    secret_keys: str,
    mail_user: MailUser,
    tmp_path: Path,
) -> Pipeline:
    return Pipeline(
        kafka=kafka_settings,
        dovecot=dovecot,
        smtp=smtp_server,
        pki=pki,
        secret_box=secret_box,
        secret_keys=secret_keys,
        work_dir=tmp_path,
        mail_user=mail_user.user,
        mail_password=mail_user.password,
        after_fetch=AfterFetch.DELETE,
    )


def spread(kills: int, *, first: float = 0.02, last: float = 0.9) -> tuple[float, ...]:
    """``kills`` progress points evenly between ``first`` and ``last`` of the backlog."""
    if kills == 1:
        return (first,)
    step = (last - first) / (kills - 1)
    return tuple(first + step * number for number in range(kills))


async def run_scenario(
    name: str,
    pipeline: Pipeline,
    *,
    mails: int,
    outbound: int,
    kills: dict[str, tuple[float, ...]],
    timeout_s: float,
) -> tuple[Ledger, dict[str, tuple[int, int]]]:
    """Deliver ``mails`` and publish ``outbound`` replies, run the pipeline, and SIGKILL (then
    restart) each service in ``kills`` each time its own progress reaches one of the given
    points (fetcher: raw records, router: routed mail, sender: final statuses), so the kills
    land while that service has work in flight; wait until everything is through. Returns
    the ledger and, per service, ``(kills, kills that landed mid-stream)``."""
    started = time.monotonic()
    message_ids = await asyncio.to_thread(pipeline.deliver, range(mails))
    await pipeline.configure()
    outbound_ids = await pipeline.publish_outbound(outbound, run=name.split(":", maxsplit=1)[0])
    topics = pipeline.kafka.topics
    pipeline.start()
    try:
        async with (
            TopicCounter(pipeline.kafka, topics.raw, raw_source_key) as raw,
            TopicCounter(pipeline.kafka, topics.routed, routed_message_id) as routed,
            TopicCounter(pipeline.kafka, topics.delivery, final_outbound_id) as finals,
        ):
            progress: dict[str, Callable[[], float]] = {
                "fetcher": lambda: len(raw.seen) / mails,
                "router": lambda: len(routed.seen) / mails,
                "sender": lambda: len(finals.seen) / outbound,
            }
            landed = await asyncio.gather(
                *(
                    kill_at_progress(
                        pipeline,
                        service,
                        thresholds=points,
                        progress=progress[service],
                        timeout_s=timeout_s,
                    )
                    for service, points in kills.items()
                )
            )
            await wait_for(
                lambda: len(routed.seen) >= mails and len(finals.seen) >= outbound,
                timeout_s=timeout_s,
                pipeline=pipeline,
            )
            await asyncio.sleep(2.0)  # let stragglers (duplicates, if any) arrive
    finally:
        pipeline.stop()
    ledger = await take_ledger(
        name,
        pipeline,
        message_ids=message_ids,
        outbound_ids=outbound_ids,
        seconds=time.monotonic() - started,
    )
    by_service = dict(zip(kills, landed, strict=True))
    print(f"kills (all, mid-stream) by service: {by_service}")  # noqa: T201 - the report
    for service, (done, _) in by_service.items():
        assert done == len(kills[service]), f"not every {service} kill happened: {by_service}"
    return ledger, by_service


@contextlib.asynccontextmanager
async def inbound_run(
    name: str, pipeline: Pipeline, *, mails: int, size: int = 2_000
) -> AsyncIterator[dict[str, int]]:
    """Deliver ``mails`` of ``size`` bytes, configure the channel and run the router and the
    fetcher; the body injects its faults and records them in the dict it gets. On a clean exit:
    stop the services, take the ledger (with those faults) and check 0 lost, 0 duplicates."""
    started = time.monotonic()
    message_ids = await asyncio.to_thread(pipeline.deliver, range(mails), size=size)
    await pipeline.configure()
    pipeline.start("router", "fetcher")
    faults: dict[str, int] = {}
    try:
        yield faults
    finally:
        pipeline.stop()
    ledger = await take_ledger(
        name,
        pipeline,
        message_ids=message_ids,
        outbound_ids=[],
        seconds=time.monotonic() - started,
    )
    ledger.faults.update(faults)
    assert_no_loss_no_duplicates(ledger)


# --- the short version: in make test ---------------------------------------------------------


async def test_short_pipeline_kills_lose_and_duplicate_nothing(pipeline: Pipeline) -> None:
    """300 mails in and 300 replies out; the fetcher, router and sender are each killed twice
    (SIGKILL) at progress points (mostly with work in flight): 0 lost, 0 visible duplicates,
    one final status per reply."""
    ledger, kills = await run_scenario(
        "short: fetcher, router, sender kill -9 x2 each, mid-stream",
        pipeline,
        mails=300,
        outbound=300,
        kills={"fetcher": (0.01, 0.5), "router": (0.01, 0.5), "sender": (0.3, 0.7)},
        timeout_s=120,
    )
    mid_stream = sum(landed for _, landed in kills.values())
    assert mid_stream >= 3, f"too few kills landed mid-stream: {kills}"
    assert_no_loss_no_duplicates(ledger)


# --- the full versions: make chaos ----------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.parametrize(
    ("name", "mails", "outbound", "service", "times"),
    [
        pytest.param("1: fetcher kill -9 x20, 3000 mails, delete mode", 3000, 0, "fetcher", 20),
        pytest.param("2: router kill -9 x10, 3000 mails", 3000, 0, "router", 10),
        pytest.param("3: sender kill -9 x20, 3000 outbound", 0, 3000, "sender", 20),
    ],
    ids=["1-fetcher", "2-router", "3-sender"],
)
async def test_service_killed_repeatedly_under_a_backlog(
    pipeline: Pipeline, name: str, mails: int, outbound: int, service: str, times: int
) -> None:
    """Scenarios 1-3: one service kill -9 ``times`` times, spread over its progress through a
    3,000-message backlog (delete mode): 0 lost, 0 visible duplicates, one final status each."""
    ledger, kills = await run_scenario(
        name,
        pipeline,
        mails=mails,
        outbound=outbound,
        kills={service: spread(times)},
        timeout_s=900,
    )
    assert kills[service][1] >= times // 2, f"too few kills landed mid-stream: {kills}"
    assert_no_loss_no_duplicates(ledger)


@pytest.mark.chaos
async def test_consumer_group_churn(pipeline: Pipeline) -> None:
    """Scenario 6: fetcher and router replicas added and removed every few seconds (seeded)
    while 2,000 mails flow: ownership and partitions move many times, nothing is lost or
    duplicated."""
    rng = random.Random(66)
    async with inbound_run(
        "6: fetcher/router replicas added and removed x12, 2000 mails", pipeline, mails=2000
    ) as faults:
        replicas: list[str] = []
        async with TopicCounter(
            pipeline.kafka, pipeline.kafka.topics.routed, routed_message_id
        ) as routed:
            for number in range(1, 13):
                await asyncio.sleep(rng.uniform(2.0, 4.0))
                if replicas and (len(replicas) >= 3 or rng.random() < 0.4):
                    pipeline.remove_replica(replicas.pop(rng.randrange(len(replicas))))
                else:
                    service = rng.choice(("fetcher", "router"))
                    replicas.append(pipeline.add_replica(service, number))
                faults["group changes"] = number
            for name in replicas:
                pipeline.remove_replica(name)
            await wait_for(lambda: len(routed.seen) >= 2000, timeout_s=600, pipeline=pipeline)
            await asyncio.sleep(2.0)


@pytest.mark.chaos
async def test_config_api_writer_killed_during_writes(pipeline: Pipeline) -> None:
    """Scenario 7: two config-api replicas (the newer one is the writer, the older one is
    fenced and answers 503), writes sent to both, the writer killed with SIGKILL mid-stream and
    started again: every write acknowledged with 2xx is in the config afterwards."""
    token = pipeline.env()["CONFIG_API_ADMIN_TOKEN"]
    first = pipeline.add_replica("config-api", 1)
    await asyncio.sleep(1.0)  # the second starts later: it takes over the writes
    second = pipeline.add_replica("config-api", 2)
    bases = [
        f"http://127.0.0.1:{pipeline.services[name].env['CONFIG_API_PORT']}"
        for name in (first, second)
    ]
    headers = {"Authorization": f"Bearer {token}"}
    acknowledged: list[str] = []
    answers: Counter[int] = Counter()
    started = time.monotonic()
    async with (
        contextlib.AsyncExitStack() as cleanup,
        httpx.AsyncClient(headers=headers, timeout=10) as client,
    ):
        cleanup.callback(pipeline.stop)

        async def ready(base: str) -> bool:
            try:
                return (await client.get(f"{base}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(lambda: ready(bases[1]), timeout_s=120, pipeline=pipeline)

        async def writes(count: int) -> None:
            for number in range(count):
                base = bases[number % 2]
                try:
                    answer = await client.post(
                        f"{base}/api/v1/campaigns", json={"name": f"chaos {number}"}
                    )
                except httpx.HTTPError:
                    answers[0] += 1
                    continue
                answers[answer.status_code] += 1
                if answer.is_success:
                    acknowledged.append(answer.json()["id"])

        await writes(100)
        pipeline.restart(second)  # SIGKILL the writer, then start it again
        await writes(100)
        killed = time.monotonic()
        await wait_for(lambda: ready(bases[1]), timeout_s=180, pipeline=pipeline)
        back_s = time.monotonic() - killed
        await writes(100)
        stored = (await client.get(f"{bases[1]}/api/v1/campaigns")).json()
    names = {item["id"] for item in stored["items"]}
    lost = [campaign for campaign in acknowledged if campaign not in names]
    print(  # noqa: T201 - the scenario's ledger
        "\n== ledger: 7: config-api writer kill -9 during writes, 300 writes to two replicas\n"
        f"  answers by status (0 = connection failed)  {dict(answers)}\n"
        f"  acknowledged writes                        {len(acknowledged)}\n"
        f"  acknowledged but LOST                      {len(lost)}\n"
        f"  writer ready again after the kill (s)      {back_s:.1f}\n"
        f"  seconds                                    {time.monotonic() - started:.1f}"
    )
    assert acknowledged, "no write was acknowledged at all"
    assert not lost


@pytest.mark.chaos
async def test_dovecot_restarted_mid_fetch(pipeline: Pipeline) -> None:
    """Scenario 5: Dovecot killed and restarted 5 times while 1,000 mails of 100 KB are fetched
    (connections reset during large FETCH responses): no truncated or lost message."""
    async with (
        inbound_run(
            "5: dovecot kill -9 + restart x5 mid-FETCH, 1000 x 100 KB",
            pipeline,
            mails=1000,
            size=100_000,
        ) as faults,
        TopicCounter(pipeline.kafka, pipeline.kafka.topics.routed, routed_message_id) as routed,
    ):
        for number in range(1, 6):
            await asyncio.sleep(2.0)
            await asyncio.to_thread(pipeline.dovecot.restart, kill=True)
            faults["dovecot"] = number
        await wait_for(lambda: len(routed.seen) >= 1000, timeout_s=600, pipeline=pipeline)


@pytest.mark.chaos
async def test_kafka_broker_killed_and_restarted_under_load(
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    pki: TestPki,
    secret_box: SecretBox,
    secret_keys: str,
    mail_user: MailUser,
    tmp_path: Path,
) -> None:
    """Scenario 4: the broker kill -9 and restart 5 times under load, then down for 60 s:
    nothing is deleted from the mailbox while Kafka is down, and all mail arrives afterwards."""
    port, controller = free_ports(2)
    broker = KafkaBroker(data_dir=tmp_path / "kafka", port=port, controller_port=controller)
    broker.start()
    try:
        kafka = KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers, topic_prefix="chaos.", partitions=3
        )
        await ensure_topics(kafka)
        pipeline = Pipeline(
            kafka=kafka,
            dovecot=dovecot,
            smtp=smtp_server,
            pki=pki,
            secret_box=secret_box,
            secret_keys=secret_keys,
            work_dir=tmp_path,
            mail_user=mail_user.user,
            mail_password=mail_user.password,
        )
        async with inbound_run(
            "4: kafka kill -9 + restart x5, then down 60 s, 2000 mails", pipeline, mails=2000
        ) as faults:
            for number in range(1, 6):
                await asyncio.sleep(4.0)
                broker.kill()
                faults["kafka"] = number
                await asyncio.sleep(2.0)
                await asyncio.to_thread(broker.start)
            await asyncio.sleep(4.0)
            broker.kill()
            faults["kafka"] = 6
            left_before = await asyncio.to_thread(pipeline.mailbox_count)
            await asyncio.sleep(60.0)
            left_after = await asyncio.to_thread(pipeline.mailbox_count)
            assert left_after == left_before, "mail was deleted while Kafka was down"
            await asyncio.to_thread(broker.start)
            back = time.monotonic()
            async with TopicCounter(kafka, kafka.topics.routed, routed_message_id) as routed:
                await wait_for(lambda: len(routed.seen) >= 2000, timeout_s=600, pipeline=pipeline)
            print(f"\ncaught up {time.monotonic() - back:.1f} s after Kafka returned")  # noqa: T201
    finally:
        with contextlib.suppress(Exception):
            broker.stop()
