"""The OpenAPI document, exercised: schemathesis generates requests for every operation against
the service run as a process on real Kafka — no answer may be a server error — and every
``/api`` operation without credentials answers 401.

Bounded for ``make test``: a few examples per operation (``CONFIG_API_FUZZ_EXAMPLES``, 3 by
default). The validate operations are left out of the fuzzing: generated settings would make
the service contact arbitrary hosts (they are covered against real servers in
test_validate.py, and by the 401 check here).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from devstack.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from devstack.kafka import KafkaEndpoint

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
EXAMPLES = int(os.environ.get("CONFIG_API_FUZZ_EXAMPLES", "3"))


@pytest.fixture(scope="module")
def served(
    kafka: KafkaEndpoint, secret_keys: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """config-api as a process (``python -m config_api``) on its own topics."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFIG_API_", "KAFKA_"))}
    env.update(
        CONFIG_API_PORT=str(port),
        CONFIG_API_ADMIN_TOKEN=ADMIN_TOKEN,
        CONFIG_API_ENSURE_TOPICS="true",
        CONFIG_API_ACCESS_LOG="false",
        KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        KAFKA_TOPIC_PREFIX=f"fuzz-{uuid.uuid4().hex[:8]}.",
        EMAIL_CHANNELS_SECRET_KEYS=secret_keys,
        EMAIL_CHANNELS_LOG_FORMAT="json",
    )
    log_path: Path = tmp_path_factory.mktemp("fuzz") / "config-api.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "config_api"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log_path.read_text()[-2000:]
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "config-api not ready within 90 s"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(30)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-4000:]


def test_no_operation_answers_with_a_server_error(served: str) -> None:
    """Whatever schemathesis sends to any operation (signed in as admin), the answer is never a
    server error."""
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json").exclude(path_regex="validate")
    operations = [result.ok() for result in schema.get_all_operations()]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: schemathesis.Case) -> None:
            response = case.call(base_url=served, headers=headers)
            case.validate_response(response, checks=(not_a_server_error,))

        call()

    assert len(operations) > 20


def test_every_api_operation_needs_credentials(served: str) -> None:
    """Each /api operation of the OpenAPI document, called without credentials: 401."""
    document = httpx.get(f"{served}/openapi.json").json()
    operations = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, item in document["paths"].items()
        if path.startswith("/api/")
        for method in item
    ]
    answers = {
        (method, path): httpx.request(method, f"{served}{path}", json={}).status_code
        for method, path in operations
    }

    assert len(operations) > 20
    assert {op: code for op, code in answers.items() if code != 401} == {}
