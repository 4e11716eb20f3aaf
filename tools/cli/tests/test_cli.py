"""``email-channels`` against a real Kafka: topics, tail, dead letters, key rotation, validate."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from typer.testing import CliRunner

from devstack.ports import free_port
from email_channels.blobstore import LocalBlobStore
from email_channels.compacted import CompactedView
from email_channels.consume import make_consumer
from email_channels.events import ChannelConfig, DeadLetter, ImapInbound, SmtpOutbound
from email_channels.headers import (
    ORIGINAL_TOPIC_HEADER,
    REPLAY_HEADER,
    RETRY_DUE_HEADER,
    RETRY_LEVEL_HEADER,
)
from email_channels.producer import EventProducer
from email_channels.secretbox import SecretBox
from email_channels_cli.app import app

if TYPE_CHECKING:
    from email_channels.settings import KafkaSettings

runner = CliRunner()


def invoke(env: dict[str, str], *args: str, input: str | None = None) -> Any:  # noqa: A002
    return runner.invoke(app, list(args), env={"COLUMNS": "250", **env}, input=input)


def kafka_env(settings: KafkaSettings) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "KAFKA_PARTITIONS": str(settings.partitions),
    }


async def publish(settings: KafkaSettings, *items: tuple[str, str, Any]) -> None:
    async with EventProducer(settings, client_id="cli-test") as producer:
        for topic, key, event in items:
            await producer.publish(topic, key, event)


async def read_all(settings: KafkaSettings, topic: str) -> list[Any]:
    consumer = make_consumer(settings, topic, group_id=None, client_id="cli-test-read")
    await consumer.start()
    try:
        found: list[Any] = []
        for _ in range(10):
            batches = await consumer.getmany(timeout_ms=500)
            found += [r for batch in batches.values() for r in batch]
            if found and not batches:
                break
        return found
    finally:
        await consumer.stop()


async def channel_now(settings: KafkaSettings, channel_id: str) -> ChannelConfig | None:
    view = CompactedView(settings, settings.topics.channels, ChannelConfig, client_id="cli-t")
    await view.start(timeout=30)
    try:
        return view.get(channel_id)
    finally:
        await view.stop()


pytestmark = pytest.mark.integration


def test_version_names_every_package():
    """`version` prints each installed package with its version."""
    result = invoke({}, "version")
    assert result.exit_code == 0, result.output
    assert "email-channels-cli 0.1.0" in result.output
    assert "email-channels-router 0.1.0" in result.output


def test_topics_check_finds_missing_topics_and_ensure_creates_them(kafka):
    """`topics check` exits 1 naming missing topics; after `topics ensure` it passes."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": f"t-{uuid.uuid4().hex[:10]}.",
        "KAFKA_PARTITIONS": "1",
    }
    before = invoke(env, "topics", "check")
    assert before.exit_code == 1, before.output
    assert f"topic {env['KAFKA_TOPIC_PREFIX']}email.channels is missing" in before.output
    ensured = invoke(env, "topics", "ensure")
    assert ensured.exit_code == 0, ensured.output
    after = invoke(env, "topics", "check")
    assert after.exit_code == 0, after.output
    durable = invoke(env | {"KAFKA_REQUIRE_DURABLE_TOPICS": "true"}, "topics", "check")
    assert durable.exit_code == 1
    assert "production mode needs every topic on at least 3 replicas" in durable.output


def test_tail_prints_a_topics_records_and_the_last_n(kafka_settings):
    """`tail` shows every record with key and JSON value; `--last 1` only the newest."""
    first = ChannelConfig(id="tail-1", name="First")
    second = ChannelConfig(id="tail-1", name="Second")
    topic = kafka_settings.topics.channels
    asyncio.run(publish(kafka_settings, (topic, "tail-1", first), (topic, "tail-1", second)))
    env = kafka_env(kafka_settings)
    result = invoke(env, "tail", "email.channels")
    assert result.exit_code == 0, result.output
    assert result.output.count("key=tail-1") == 2
    assert '"name": "First"' in result.output
    assert '"name": "Second"' in result.output
    last = invoke(env, "tail", "email.channels", "--last", "1")
    assert '"name": "First"' not in last.output
    assert '"name": "Second"' in last.output
    assert invoke(env, "tail", "no.such.topic").exit_code == 2


def dead_letter(settings: KafkaSettings, *, channel: str, offset: int, **extra: Any) -> DeadLetter:
    value = json.dumps({"channel_id": channel, "n": offset}).encode()
    fields: dict[str, Any] = {
        "stage": "router",
        "source_topic": settings.topics.raw,
        "partition": 0,
        "offset": offset,
        "error_kind": "PoisonRecord",
        "error_message": f"bad record {offset}",
        "retriable": False,
        "original_key": channel.encode(),
        "original_value": value,
        "original_headers": {"schema": "RawEmail/1"},
    }
    return DeadLetter(**(fields | extra))


def test_dlq_list_show_and_replay_one_channel(kafka_settings):
    """`dlq list --channel` shows that channel's letters; `dlq replay --channel` re-publishes
    exactly their original records (key, value, headers) with the replay header."""
    dlq = kafka_settings.topics.dlq
    letters = [
        dead_letter(kafka_settings, channel="ch-a", offset=1),
        dead_letter(kafka_settings, channel="ch-b", offset=2),
        dead_letter(kafka_settings, channel="ch-a", offset=3),
    ]
    asyncio.run(publish(kafka_settings, *[(dlq, "k", letter) for letter in letters]))
    env = kafka_env(kafka_settings)

    listed = invoke(env, "dlq", "list", "--channel", "ch-a")
    assert listed.exit_code == 0, listed.output
    assert "2 dead letters" in listed.output
    assert "bad record 1" in listed.output
    assert "bad record 3" in listed.output
    assert "bad record 2" not in listed.output

    refs = [line.split()[1] for line in listed.output.splitlines() if "bad record" in line]
    shown = invoke(env, "dlq", "show", refs[0])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["original_value"] == {"channel_id": "ch-a", "n": 1}

    assert invoke(env, "dlq", "replay").exit_code == 2  # no filter: refuses
    replayed = invoke(env, "dlq", "replay", "--channel", "ch-a", "--yes")
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 2 dead letters" in replayed.output

    raw = asyncio.run(read_all(kafka_settings, kafka_settings.topics.raw))
    assert [json.loads(r.value)["n"] for r in raw] == [1, 3]
    assert {r.key for r in raw} == {b"ch-a"}
    headers = dict(raw[0].headers)
    assert headers["schema"] == b"RawEmail/1"
    assert headers[REPLAY_HEADER].decode().startswith(f"{dlq}/")


def test_dlq_replay_sends_a_retried_outbound_back_to_its_original_topic(kafka_settings):
    """A dead letter read from a sender retry topic goes back to its `original-topic`
    (email.outbound), without the retry headers and with the replay header naming it."""
    outbound = kafka_settings.topics.outbound
    letter = dead_letter(
        kafka_settings,
        channel="ch-r",
        offset=5,
        stage="sender",
        source_topic=f"{outbound}.retry.3",
        original_headers={
            "schema": "OutboundEmail/1",
            ORIGINAL_TOPIC_HEADER: outbound,
            RETRY_LEVEL_HEADER: "3",
            RETRY_DUE_HEADER: "1700000000000",
        },
    )
    asyncio.run(publish(kafka_settings, (kafka_settings.topics.dlq, "ch-r", letter)))
    result = invoke(kafka_env(kafka_settings), "dlq", "replay", "--all", "--yes")
    assert result.exit_code == 0, result.output
    [record] = asyncio.run(read_all(kafka_settings, outbound))
    headers = dict(record.headers)
    assert json.loads(record.value)["n"] == 5
    assert headers["schema"] == b"OutboundEmail/1"
    assert headers[REPLAY_HEADER].decode().startswith(f"{kafka_settings.topics.dlq}/")
    assert not {ORIGINAL_TOPIC_HEADER, RETRY_LEVEL_HEADER, RETRY_DUE_HEADER} & set(headers)


def test_dlq_replay_reads_a_large_original_from_the_blob_store(kafka_settings, tmp_path):
    """A dead letter whose value went to the blob store is replayed with that value."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    big = b'{"channel_id": "ch-big", "body": "' + b"x" * 300_000 + b'"}'
    ref = asyncio.run(blobs.put(big))
    letter = dead_letter(
        kafka_settings, channel="ch-big", offset=7, original_value=None, original_value_ref=ref
    )
    asyncio.run(publish(kafka_settings, (kafka_settings.topics.dlq, "ch-big", letter)))
    env = kafka_env(kafka_settings) | {"EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{tmp_path}/blobs"}
    result = invoke(env, "dlq", "replay", "--all", "--yes")
    assert result.exit_code == 0, result.output
    [record] = asyncio.run(read_all(kafka_settings, kafka_settings.topics.raw))
    assert record.value == big


def test_secrets_rotate_reencrypts_every_secret_with_the_newest_key(kafka_settings):
    """After rotation every secret is on the new key, decrypts to the same text, revision + 1;
    a dry run changes nothing and a second run finds nothing left."""
    old_key, new_key = SecretBox.generate_key(), SecretBox.generate_key()
    old = SecretBox.from_env(f"old:{old_key}")
    channel = ChannelConfig(
        id="rot-1",
        name="Rotating",
        inbound=ImapInbound(
            host="imap.example", port=993, username="u", password=old.encrypt("p-in")
        ),
        outbound=SmtpOutbound(host="smtp.example", port=587, password=old.encrypt("p-out")),
        revision=4,
    )
    untouched = ChannelConfig(id="rot-2", name="No secrets")
    topic = kafka_settings.topics.channels
    asyncio.run(publish(kafka_settings, (topic, channel.id, channel), (topic, "rot-2", untouched)))
    env = kafka_env(kafka_settings) | {"EMAIL_CHANNELS_SECRET_KEYS": f"new:{new_key},old:{old_key}"}

    dry = invoke(env, "secrets", "rotate", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would re-encrypt 2 secrets in 1 channels" in dry.output
    assert asyncio.run(channel_now(kafka_settings, "rot-1")) == channel

    done = invoke(env, "secrets", "rotate")
    assert done.exit_code == 0, done.output
    assert "2 channels read; re-encrypted 2 secrets in 1 channels with key 'new'" in done.output
    after = asyncio.run(channel_now(kafka_settings, "rot-1"))
    assert after is not None
    assert after.revision == 5
    assert after.inbound is not None
    assert after.outbound is not None
    assert isinstance(after.outbound, SmtpOutbound)
    assert after.outbound.password is not None
    assert (after.inbound.password.kid, after.outbound.password.kid) == ("new", "new")
    box = SecretBox.from_env(env["EMAIL_CHANNELS_SECRET_KEYS"])
    assert box.decrypt(after.inbound.password) == "p-in"
    assert box.decrypt(after.outbound.password) == "p-out"

    again = invoke(env, "secrets", "rotate")
    assert "re-encrypted 0 secrets" in again.output


def test_secrets_rotate_reports_a_secret_whose_key_is_gone(kafka_settings):
    """A secret on a key no longer in the keyring is reported (exit 1), never overwritten."""
    lost = SecretBox.from_env(f"lost:{SecretBox.generate_key()}")
    channel = ChannelConfig(
        id="rot-lost",
        name="Lost",
        outbound=SmtpOutbound(host="smtp.example", port=587, password=lost.encrypt("x")),
    )
    asyncio.run(publish(kafka_settings, (kafka_settings.topics.channels, channel.id, channel)))
    env = kafka_env(kafka_settings) | {
        "EMAIL_CHANNELS_SECRET_KEYS": f"new:{SecretBox.generate_key()}"
    }
    result = invoke(env, "secrets", "rotate")
    assert result.exit_code == 1
    assert "rot-lost" in result.output
    assert "'lost'" in result.output
    assert asyncio.run(channel_now(kafka_settings, "rot-lost")) == channel


ADMIN_TOKEN = "cli-test-admin-token-0123456789"


@pytest.fixture
def config_api_url(kafka_settings, secret_keys, pki):
    """A real config-api (``python -m config_api``, as the image runs it) on this test's topics,
    allowed to reach loopback mail servers and trusting the test CA; its base URL."""
    port = free_port()
    env = (
        os.environ
        | kafka_env(kafka_settings)
        | {
            "EMAIL_CHANNELS_SECRET_KEYS": secret_keys,
            "EMAIL_CHANNELS_ALLOWED_HOSTS": "127.0.0.1",
            "EMAIL_CHANNELS_CA_FILE": str(pki.ca_cert),
            "CONFIG_API_HOST": "127.0.0.1",
            "CONFIG_API_PORT": str(port),
            "CONFIG_API_ADMIN_TOKEN": ADMIN_TOKEN,
            "CONFIG_API_VALIDATE_TIMEOUT_S": "10",
        }
    )
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "config_api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"config-api did not get ready: {process.stderr.read()!r}")
            time.sleep(0.2)
        yield url
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stderr.close()


def test_channel_validate_shows_each_step_and_fails_on_a_failed_one(config_api_url, smtp_server):
    """Against the real config-api: inbound (closed port) fails at tcp, outbound (real SMTP)
    passes: both shown with their steps, exit 1; --direction outbound alone exits 0; a bad
    token and an unknown channel exit 2 with config-api's reason."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    created = httpx.post(
        f"{config_api_url}/api/v1/channels",
        headers=admin,
        json={
            "name": "Validated from the CLI",
            "email_address": "support@example.com",
            "inbound": {
                "host": "127.0.0.1",
                "port": free_port(),
                "tls": "ssl",
                "username": "nobody",
                "password": "not-shown-anywhere",
                "folders": ["INBOX"],
            },
            "outbound": {
                "host": smtp_server.host,
                "port": smtp_server.port,
                "tls": "starttls",
                "username": smtp_server.credentials[0],
                "password": smtp_server.credentials[1],
            },
        },
        timeout=30,
    )
    assert created.status_code == 201, created.text
    channel_id = created.json()["id"]
    env = {"CONFIG_API_URL": config_api_url, "CONFIG_API_TOKEN": ADMIN_TOKEN}

    result = invoke(env, "channel", "validate", channel_id)
    assert result.exit_code == 1, result.output
    assert "inbound (imap): ✗ failed" in result.output
    assert "outbound (smtp): ✓ valid" in result.output
    assert "mail_from" in result.output
    assert "outcome recorded on email.channel-status" in result.output
    assert "not-shown-anywhere" not in result.output
    outbound = invoke(env, "channel", "validate", channel_id, "--direction", "outbound")
    assert outbound.exit_code == 0, outbound.output
    assert "inbound" not in outbound.output
    refused = invoke(env | {"CONFIG_API_TOKEN": "bad"}, "channel", "validate", channel_id)
    assert refused.exit_code == 2, refused.output
    assert "refused the token (401" in refused.output
    unknown = invoke(env, "channel", "validate", "nope")
    assert unknown.exit_code == 2, unknown.output
    assert "knows no channel 'nope'" in unknown.output
