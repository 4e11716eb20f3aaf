"""Helpers for running the config API against the real Kafka of the devstack fixtures."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from config_api.app import create_app
from config_api.settings import ConfigApiSettings
from email_channels.settings import CommonSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from email_channels.settings import KafkaSettings


ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
TEST_HOST = "config-api"


@pytest.fixture
def api_settings(kafka_settings: KafkaSettings, secret_keys: str) -> ConfigApiSettings:
    return ConfigApiSettings(
        kafka=kafka_settings,
        common=CommonSettings(secret_keys=secret_keys),
        admin_token=ADMIN_TOKEN,
        trusted_hosts=f"{TEST_HOST},127.0.0.1,localhost",
    )


@contextlib.asynccontextmanager
async def running_api(
    settings: ConfigApiSettings, *, token: str | None = ADMIN_TOKEN
) -> AsyncIterator[httpx.AsyncClient]:
    """One config-api instance (lifespan included) and a client signed in with ``token``
    (the operator's admin token by default; None: no credentials); ready when entered.

    Settings built by a test without sign-in get the test admin token and host added."""
    if settings.admin_token is None:
        settings = settings.model_copy(
            update={"admin_token": SecretStr(ADMIN_TOKEN), "trusted_hosts": TEST_HOST}
        )
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=f"http://{TEST_HOST}", headers=headers
        ) as client,
    ):
        await wait_ready(client)
        yield client


@pytest.fixture
def run_api() -> Callable[[ConfigApiSettings], AbstractAsyncContextManager[httpx.AsyncClient]]:
    """``async with run_api(settings) as client``: an instance with any settings."""
    return running_api


@pytest.fixture
def api_factory(
    api_settings: ConfigApiSettings,
) -> Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]]:
    """``async with api_factory() as client``: a fresh instance on this test's topics."""
    return lambda: running_api(api_settings)


@pytest.fixture
async def api(
    api_factory: Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]],
) -> AsyncIterator[httpx.AsyncClient]:
    async with api_factory() as client:
        yield client


async def wait_ready(client: httpx.AsyncClient, *, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        response = await client.get("/readyz")
        if response.status_code == 200:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"config-api not ready within {timeout}s: {response.text}")
        await asyncio.sleep(0.1)


@pytest.fixture
def read_topic() -> Callable[[KafkaSettings, str], Awaitable[list[tuple[str, bytes | None]]]]:
    """``await read_topic(settings, topic)``: the topic's committed records as (key, value)."""
    return _read_topic


async def _read_topic(settings: KafkaSettings, topic: str) -> list[tuple[str, bytes | None]]:
    consumer = AIOKafkaConsumer(
        topic,
        **settings.client_kwargs(),
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            # Without a group the consumer takes every partition once it knows them; aiokafka
            # offers no event for that.
            while not consumer.assignment():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            ends = await consumer.end_offsets(list(consumer.assignment()))
            records: list[tuple[str, bytes | None]] = []
            for tp, end in ends.items():
                while await consumer.position(tp) < end:
                    batches = await consumer.getmany(tp, timeout_ms=500)
                    records.extend((r.key.decode(), r.value) for r in batches.get(tp, []))
        return records
    finally:
        await consumer.stop()
