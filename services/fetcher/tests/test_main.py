"""``python -m fetcher`` as a real process: fetches, serves /metrics, never logs the password,
and on SIGTERM/SIGINT finishes, leaves the group and exits 0."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest

from devstack.ports import free_port
from devstack.processes import ChildService
from email_channels.producer import EventProducer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_main_fetches_and_stops_cleanly_on_signal(
    sig, kafka_settings, dovecot, mail_user, imap_channel, secret_keys, tmp_path
):
    metrics_port = free_port()
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "EMAIL_CHANNELS_SECRET_KEYS": secret_keys,
        "EMAIL_CHANNELS_ALLOWED_HOSTS": "127.0.0.1",
        "EMAIL_CHANNELS_CA_FILE": str(dovecot.ca_file),
        "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{tmp_path}/blobs",
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
        "EMAIL_CHANNELS_LOG_LEVEL": "debug",
        "EMAIL_CHANNELS_METRICS_PORT": str(metrics_port),
        "FETCHER_INSTANCE_ID": "fetcher-main-test",
    }
    channel = imap_channel(mail_user)
    dovecot.deliver(mail_user.user, b"Subject: hi\r\nMessage-ID: <main@x>\r\n\r\nhello\r\n")
    async with ChildService("fetcher", env) as child:
        async with EventProducer(kafka_settings, client_id="main-test") as producer:
            await producer.publish(kafka_settings.topics.channels, channel.id, channel)
        await child.wait_for_log("channel active")
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        returncode = await child.stop(sig)
    lines = child.lines
    output = "".join(lines)

    assert returncode == 0, output
    events = [json.loads(line) for line in lines if line.startswith("{")]
    [fetched] = [e for e in events if e["event"] == "messages fetched"]
    assert fetched["channel_id"] == channel.id
    assert fetched["messages"] == 1
    assert fetched["first_uid"] == 1
    assert any(e["event"] == "left fetcher group" for e in events)
    assert mail_user.password not in output
    assert 'email_fetcher_messages_fetched_total{protocol="imap",storage="inline"} 1.0' in metrics
