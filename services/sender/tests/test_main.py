"""``python -m sender`` as a real process: sends, logs with context, stops cleanly on signals."""

from __future__ import annotations

import json
import os
import signal
import uuid

import pytest

from devstack.processes import ChildService
from email_channels.events import ChannelConfig, OutboundEmail, SmtpOutbound, TlsMode
from email_channels.producer import EventProducer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_main_sends_and_stops_cleanly_on_signal(
    sig, kafka_settings, smtp_server, secret_box, secret_keys, pki, tmp_path
):
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "EMAIL_CHANNELS_SECRET_KEYS": secret_keys,
        "EMAIL_CHANNELS_ALLOWED_HOSTS": "127.0.0.1",
        "EMAIL_CHANNELS_CA_FILE": str(pki.ca_cert),
        "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{tmp_path}/blobs",
        "EMAIL_CHANNELS_LOG_FORMAT": "json",
        "EMAIL_CHANNELS_LOG_LEVEL": "debug",  # a sent message's line is at debug (no secret either)
    }
    channel = ChannelConfig(
        id=f"ch-{uuid.uuid4().hex[:8]}",
        name="Support",
        email_address="support@shop.example",
        enabled=True,
        outbound=SmtpOutbound(
            host=smtp_server.host,
            port=smtp_server.port,
            tls=TlsMode.STARTTLS,
            username="sender",
            password=secret_box.encrypt("sender-secret"),
        ),
    )
    to = f"main-{uuid.uuid4().hex[:8]}@customer.example"
    outbound = OutboundEmail.model_validate(
        {
            "outbound_id": f"out-{uuid.uuid4().hex[:8]}",
            "channel_id": channel.id,
            "to": [{"address": to}],
        }
    )
    async with ChildService("sender", env) as child:
        async with EventProducer(kafka_settings, client_id="main-test") as producer:
            await producer.publish(kafka_settings.topics.channels, channel.id, channel)
            await child.wait_for_log("sender ready")
            await producer.publish(kafka_settings.topics.outbound, "conv", outbound)
        await child.wait_for_log("outbound handled")
        returncode = await child.stop(sig)
    lines = child.lines

    assert returncode == 0
    assert any(to in m.rcpt_tos for m in smtp_server.messages)
    handled = json.loads(next(line for line in lines if "outbound handled" in line))
    assert handled["outbound_id"] == outbound.outbound_id
    assert handled["channel_id"] == channel.id
    assert handled["outcome"] == "sent"
    assert any("sender stopped" in line for line in lines)
    assert not any("sender-secret" in line for line in lines)
