"""The service as operators run it: ``python -m config_api`` as a process, real HTTP, real Kafka."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import httpx
import pytest

from devstack.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path

    from email_channels.settings import KafkaSettings

PASSWORD = "process-Secret-9731"
ADMIN_TOKEN = "process-admin-token-canary-48151623"


def service_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFIG_API_", "KAFKA_"))}
    env.pop("EMAIL_CHANNELS_SECRET_KEYS", None)
    env.update(EMAIL_CHANNELS_LOG_FORMAT="json", **values)
    return env


def test_refuses_to_start_without_secret_keys(tmp_path: Path) -> None:
    """Exit status 2 and a message naming the variable to set, before anything else happens."""
    result = subprocess.run(
        [sys.executable, "-m", "config_api"],
        env=service_env(CONFIG_API_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )

    assert result.returncode == 2
    assert "EMAIL_CHANNELS_SECRET_KEYS is not set" in result.stderr


@pytest.mark.integration
async def test_serves_logs_one_line_per_write_and_stops_cleanly_on_sigterm(
    kafka_settings: KafkaSettings, secret_keys: str, tmp_path: Path
) -> None:
    """Ready once caught up; a write logs one canonical line with channel_id; neither the
    password nor the admin token appears in the log, even at debug level; SIGTERM ends the
    process with status 0; ``CONFIG_API_ROOT_PATH`` reaches the app (the OpenAPI servers)."""
    port = free_port()
    env = service_env(
        CONFIG_API_PORT=str(port),
        KAFKA_BOOTSTRAP_SERVERS=kafka_settings.bootstrap_servers,
        KAFKA_TOPIC_PREFIX=kafka_settings.topic_prefix,
        EMAIL_CHANNELS_SECRET_KEYS=secret_keys,
        EMAIL_CHANNELS_LOG_LEVEL="debug",
        CONFIG_API_ADMIN_TOKEN=ADMIN_TOKEN,
        CONFIG_API_ROOT_PATH="/config",
    )
    log_path = tmp_path / "config-api.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, then only signalled
            [sys.executable, "-m", "config_api"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as client:
            await _wait_ready(client, process)
            anonymous = await client.get("/api/v1/channels", headers={"Authorization": ""})
            assert anonymous.status_code == 401
            openapi = await client.get("/openapi.json")
            assert openapi.json()["servers"] == [{"url": "/config"}], openapi.text
            created = await client.post(
                "/api/v1/channels",
                json={
                    "name": "Process test",
                    "inbound": {
                        "host": "imap.example.com",
                        "username": "u",
                        "password": PASSWORD,
                    },
                },
            )
            assert created.status_code == 201, created.text
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    output = log_path.read_text()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    writes = [line for line in lines if line.get("event") == "channel create"]
    assert returncode == 0, output[-2000:]
    assert PASSWORD not in output
    assert ADMIN_TOKEN not in output
    assert len(writes) == 1
    assert writes[0]["channel_id"] == created.json()["id"]
    assert writes[0]["outcome"] == "ok"
    assert writes[0]["service"] == "config-api"
    assert any(line.get("event") == "config-api stopped" for line in lines)


async def _wait_ready(client: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        assert process.poll() is None, "config-api exited before it was ready"
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        if loop.time() > deadline:
            raise TimeoutError("config-api not ready within 60s")
        await asyncio.sleep(0.2)
