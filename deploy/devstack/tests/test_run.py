"""``python -m devstack run --demo`` (``make demo``, the README's product command plus a seeded
mailbox) as a user runs it: everything comes up, the seeded mail flows end to end, and Ctrl-C
stops every process it started."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from devstack.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SEEDED = 5
"""What the demo seeds: 3 mails in the Dovecot mailbox, 2 in the Exchange stand-in's."""


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


async def _records(bootstrap: str, topic: str) -> list[dict[str, object]]:
    """Every record of ``topic`` so far (read_committed), as JSON."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=2000)
        return [json.loads(r.value) for rs in batches.values() for r in rs if r.value]
    finally:
        await consumer.stop()


async def test_demo_runs_flows_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """``python -m devstack run --demo`` starts its own Kafka, the services and the mail
    servers; the admin page and API answer with the printed token; the 5 seeded mails are
    routed and each gets a reply delivered; SIGINT ends it with status 0 and closes its ports."""
    port, kafka_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CONFIG_API_"))}
    env.pop("EMAIL_CHANNELS_SECRET_KEYS", None)
    env["EMAIL_CHANNELS_VAR_DIR"] = str(tmp_path / "var")
    output = tmp_path / "devstack.log"
    with output.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, then only signalled
            [
                sys.executable,
                "-m",
                "devstack",
                "run",
                "--demo",
                "--port",
                str(port),
                "--kafka-port",
                str(kafka_port),
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    bootstrap = f"127.0.0.1:{kafka_port}"
    try:
        deadline = time.monotonic() + 120
        token = None
        while token is None:
            assert process.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, "no banner within 120 s"
            found = re.search(r"admin token\s+(\S+)", output.read_text())
            token = found.group(1) if found else None
            await asyncio.sleep(0.5)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        ) as client:
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/")).status_code == 200
            channels = (await client.get("/api/v1/channels")).json()
            assert channels["total"] == 2, channels

        routed: list[dict[str, object]] = []
        sent: list[dict[str, object]] = []
        while len(routed) < SEEDED or len(sent) < SEEDED:
            assert process.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, f"routed {len(routed)}, sent {len(sent)}"
            routed = await _records(bootstrap, "email.routed")
            deliveries = await _records(bootstrap, "email.delivery")
            sent = [d for d in deliveries if d.get("status") == "sent"]
        assert len({r["email_id"] for r in routed}) == SEEDED

        process.send_signal(signal.SIGINT)
        returncode = await asyncio.to_thread(process.wait, 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert returncode == 0, output.read_text()[-3000:]
    assert not _port_open(port), "config-api still listening after Ctrl-C"
    assert not _port_open(kafka_port), "Kafka still listening after Ctrl-C"
