"""End to end: the four services as processes, real Kafka, real Dovecot, real SMTP server.

A channel created through config-api's HTTP API makes mail delivered into its Dovecot mailbox
come out on email.routed with the channel's default campaign; a reply put on email.outbound is
received by the SMTP server and followed by a "sent" delivery event.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from devstack.java_consumer import validate_topic
from devstack.mail import customer_mail
from devstack.pytest_plugin import E2E_ADMIN_TOKEN
from email_channels.codec import decode, header
from email_channels.compacted import CompactedView
from email_channels.consume import make_consumer
from email_channels.events import (
    Address,
    DeliveryEvent,
    DeliveryStatus,
    OutboundEmail,
    RoutedEmail,
)
from email_channels.producer import EventProducer

if TYPE_CHECKING:
    from devstack.dovecot import Dovecot
    from devstack.processes import ServiceProcesses
    from devstack.pytest_plugin import MailUser
    from devstack.smtp import SmtpServer
    from email_channels.settings import KafkaSettings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def _create_channel(
    client: httpx.AsyncClient, user: MailUser, dovecot: Dovecot, smtp: SmtpServer
) -> tuple[str, str]:
    response = await client.post("/api/v1/campaigns", json={"name": "Support"})
    assert response.status_code in {200, 201}, response.text
    campaign_id: str = response.json()["id"]
    assert smtp.credentials is not None
    response = await client.post(
        "/api/v1/channels",
        json={
            "name": "Support mailbox",
            "email_address": user.address,
            "default_campaign_id": campaign_id,
            "enabled": True,
            "inbound": {
                "kind": "imap",
                "host": dovecot.host,
                "port": dovecot.imaps_port,
                "tls": "ssl",
                "username": user.user,
                "password": user.password,
            },
            "outbound": {
                "kind": "smtp",
                "host": smtp.host,
                "port": smtp.port,
                "tls": "starttls",
                "username": smtp.credentials[0],
                "password": smtp.credentials[1],
            },
        },
    )
    assert response.status_code in {200, 201}, response.text
    body: dict[str, Any] = response.json()
    assert "password" not in response.text.replace("password_set", "")
    return body["id"], campaign_id


async def _java_consumer_validates(kafka_settings: KafkaSettings, *, records: int) -> None:
    """The contract outside Python: a Java consumer validates every routed record against the
    committed JSON Schema (and the campaign-id header against the body)."""
    validation = await asyncio.to_thread(
        validate_topic,
        kafka_settings.bootstrap_servers,
        kafka_settings.topics.routed,
        "email.routed.schema.json",
        min_records=records,
    )
    assert validation.ok, validation.output
    assert f"validated={records} invalid=0" in validation.output, validation.output


async def test_mail_in_a_mailbox_comes_out_routed_and_a_reply_is_sent(
    four_services: tuple[ServiceProcesses, str],
    kafka_settings: KafkaSettings,
    dovecot: Dovecot,
    mail_user: MailUser,
    smtp_server: SmtpServer,
    wait_until: Any,
) -> None:
    processes, base = four_services
    async with httpx.AsyncClient(
        base_url=base, timeout=30, headers={"Authorization": f"Bearer {E2E_ADMIN_TOKEN}"}
    ) as client:
        channel_id, campaign_id = await _create_channel(client, mail_user, dovecot, smtp_server)

    subject = f"Order question {uuid.uuid4().hex[:8]}"
    dovecot.deliver(mail_user.user, customer_mail(mail_user.address, subject))

    topics = kafka_settings.topics
    consumer = make_consumer(kafka_settings, topics.routed, group_id=None, client_id="e2e")
    await consumer.start()
    try:
        routed: RoutedEmail | None = None
        campaign_header: str | None = None
        deadline_batches = 120
        for _ in range(deadline_batches):
            processes.check_alive()
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    event = decode(RoutedEmail, record.value)
                    if event.subject == subject:
                        routed, campaign_header = event, header(record.headers, "campaign-id")
            if routed is not None:
                break
        assert routed is not None, "the delivered mail never appeared on email.routed"
    finally:
        await consumer.stop()

    assert routed.channel_id == channel_id
    assert routed.campaign_id == campaign_id
    assert campaign_header == campaign_id
    assert routed.reason.kind == "default"
    assert routed.from_ is not None
    assert routed.from_.address == "alice@customer.example"
    assert routed.text_body is not None
    assert "Where is my order?" in routed.text_body

    await _java_consumer_validates(kafka_settings, records=1)

    # The campaign service answers on email.outbound; the sender delivers it by SMTP.
    outbound = OutboundEmail(
        outbound_id=f"reply-{uuid.uuid4().hex[:8]}",
        channel_id=channel_id,
        conversation_id=routed.conversation_id,
        to=[Address(address="alice@customer.example")],
        subject=f"Re: {subject}",
        text_body="Your order ships tomorrow.",
        in_reply_to=routed.message_id,
    )
    async with EventProducer(kafka_settings, client_id="e2e-campaign") as producer:
        await producer.publish(topics.outbound, routed.conversation_id, outbound)

    received = await asyncio.to_thread(
        smtp_server.wait_for, lambda mail: mail.message()["Subject"] == f"Re: {subject}", 60
    )
    assert received.rcpt_tos == ("alice@customer.example",)
    assert received.tls
    assert received.authenticated_as == "sender"
    assert received.message()["In-Reply-To"] == routed.message_id

    deliveries = CompactedView(
        kafka_settings, topics.delivery, DeliveryEvent, client_id="e2e-delivery"
    )
    await deliveries.start()
    try:
        delivery = await wait_until(lambda: deliveries.get(outbound.outbound_id), timeout=60)
    finally:
        await deliveries.stop()
    assert delivery.status is DeliveryStatus.SENT
    assert delivery.channel_id == channel_id
