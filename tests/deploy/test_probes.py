"""Every service answers the Helm chart's liveness and readiness probes (real processes, Kafka).

The paths and the port variables come from the chart's values, so the chart and the services
cannot drift apart: fetcher, router and sender serve ``email_channels.health`` on
``EMAIL_CHANNELS_HEALTH_PORT``; config-api serves the same paths on its HTTP port.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack.ports import free_ports
from devstack.processes import ChildService
from email_channels.compacted import CompactedView
from email_channels.consume import make_consumer
from email_channels.events import ChannelConfig
from email_channels.health import HealthServer, group_problem, view_problem

pytestmark = pytest.mark.integration

CHART = Path(__file__).parents[2] / "deploy" / "helm" / "email-channels"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def probe_paths() -> tuple[str, str]:
    probes = VALUES["probes"]
    return probes["liveness"]["httpGet"]["path"], probes["readiness"]["httpGet"]["path"]


def service_env(name: str, base: dict[str, str], port: int, tmp_path: Path) -> dict[str, str]:
    env = dict(base)
    if name == "config-api":
        env |= {"CONFIG_API_HOST": "127.0.0.1", "CONFIG_API_PORT": str(port)}
    else:
        env |= {"EMAIL_CHANNELS_HEALTH_HOST": "127.0.0.1", "EMAIL_CHANNELS_HEALTH_PORT": str(port)}
    if name == "router":
        env["ROUTER_INSTANCE_ID"] = f"probe-{tmp_path.name}"
    return env


async def status_of(client: httpx.AsyncClient, url: str) -> tuple[int, Any]:
    try:
        response = await client.get(url, timeout=2)
    except httpx.TransportError as exc:
        return 0, str(exc)
    return response.status_code, response.json()


async def wait_status(client: httpx.AsyncClient, url: str, wanted: int, *, timeout: float) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    last: tuple[int, Any] = (0, None)
    while asyncio.get_running_loop().time() < deadline:
        last = await status_of(client, url)
        if last[0] == wanted:
            return last[1]
        await asyncio.sleep(0.3)
    pytest.fail(f"{url} answered {last} instead of {wanted} within {timeout}s")


def common_env(kafka_settings: Any, secret_keys: str, tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "EMAIL_CHANNELS_SECRET_KEYS": secret_keys,
        "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{tmp_path}/blobs",
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
    }


MODULES = {"fetcher": "fetcher", "router": "router", "sender": "sender", "config-api": "config_api"}


@pytest.mark.e2e
async def test_every_service_answers_the_charts_probes(kafka_settings, secret_keys, tmp_path):
    """All four services, on real Kafka: /healthz 200 at once, /readyz 200 once ready."""
    liveness, readiness = probe_paths()
    base = common_env(kafka_settings, secret_keys, tmp_path)
    ports = dict(zip(MODULES, free_ports(len(MODULES)), strict=True))
    children = {
        name: ChildService(module, service_env(name, base, ports[name], tmp_path))
        for name, module in MODULES.items()
    }
    async with httpx.AsyncClient() as client:
        for child in children.values():
            await child.__aenter__()
        try:
            for name in MODULES:
                url = f"http://127.0.0.1:{ports[name]}"
                body = await wait_status(client, url + liveness, 200, timeout=60)
                assert body["status"] == "ok", name
                ready = await wait_status(client, url + readiness, 200, timeout=90)
                assert ready["status"] == "ready", name
            for name, child in children.items():
                assert await child.stop() == 0, (name, "".join(child.lines[-20:]))
        finally:
            for child in children.values():
                await child.__aexit__(None, None, None)


async def test_group_readiness_follows_a_real_consumers_membership(kafka_settings):
    """group_problem: not started -> reason; joined the group -> ready; stopped -> reason."""
    group = f"{kafka_settings.topic_prefix}probe-group"
    consumer = make_consumer(
        kafka_settings, kafka_settings.topics.outbound, group_id=group, client_id="probe-test"
    )
    assert group_problem(None, group) == f"consumer of group {group} not started"
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while group_problem(consumer, group) is not None:
            assert asyncio.get_running_loop().time() < deadline, group_problem(consumer, group)
            await consumer.getmany(timeout_ms=200)
    finally:
        await consumer.stop()
    assert group_problem(consumer, group) is not None


async def test_view_readiness_waits_for_the_view_to_catch_up(kafka_settings):
    """view_problem: a view not started yet is unready; once caught up it is ready."""
    view = CompactedView(
        kafka_settings, kafka_settings.topics.channels, ChannelConfig, client_id="probe-view"
    )
    assert "not caught up" in (view_problem(view, "channels") or "")
    assert view_problem(None, "channels") == "channels view not started"
    await view.start(timeout=30)
    try:
        assert view_problem(view, "channels") is None
    finally:
        await view.stop()


async def test_health_server_answers_only_its_paths():
    """/readyz carries the readiness reason; unknown paths are 404 and other methods 405."""
    server = HealthServer(lambda: "not yet", port=0, host="127.0.0.1")
    async with server, httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{server.port}"
        assert (await client.get(base + "/nope")).status_code == 404
        readyz = await client.get(base + "/readyz")
        assert (readyz.status_code, readyz.json()["reason"]) == (503, "not yet")
        assert (await client.post(base + "/healthz")).status_code == 405
        assert (await client.get(base + "/healthz")).json() == {"status": "ok", "reason": None}
