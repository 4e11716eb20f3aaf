"""Sending through Exchange Online against the local HTTPS identity/Graph stand-in (real msal).

What the stand-in received is read back from it: the MIME it would deliver, and how it came
(one sendMail, or a draft with attachments uploaded in chunks).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from devstack.graph import AppRegistration, read_form_post
from email_channels.codec import decode
from email_channels.errors import ChannelMisconfigured, TransientError
from email_channels.events import (
    ChannelConfig,
    DeliveryEvent,
    DeliveryStatus,
    GraphAuth,
    GraphOutbound,
    OutboundEmail,
)
from email_channels.graph_auth import GraphTokens
from email_channels.graph_client import GraphThrottled
from email_channels.hostpolicy import HostPolicy
from email_channels.producer import EventProducer
from email_channels.settings import CommonSettings
from email_channels.tls import client_context
from sender.app import SenderApp
from sender.compose import compose
from sender.errors import DeliveryUncertain, MessageRejected
from sender.settings import SenderSettings
from sender.transports import ChannelTransports

if TYPE_CHECKING:
    from sender.transports.base import BeforeData

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from devstack.graph import LocalGraph

MAILBOX = "support@contoso.test"
MiB = 1024 * 1024


@pytest.fixture
def channel(local_graph: LocalGraph, secret_box) -> ChannelConfig:
    app = local_graph.register_app(
        AppRegistration(
            tenant_id=f"tenant-{uuid.uuid4().hex[:6]}",
            client_id=str(uuid.uuid4()),
            client_secret="app~secret.value",
        )
    )
    local_graph.add_mailbox(MAILBOX)
    return ChannelConfig(
        id=f"ch-{uuid.uuid4().hex[:8]}",
        name="Exchange support",
        email_address=MAILBOX,
        default_campaign_id="camp-1",
        enabled=True,
        outbound=GraphOutbound(
            tenant_id=app.tenant_id,
            client_id=app.client_id,
            client_secret=secret_box.encrypt(app.client_secret),
            mailbox=MAILBOX,
            authority_host=local_graph.authority_host,
            graph_url=local_graph.graph_url,
        ),
    )


@pytest.fixture
async def transports(secret_box, pki) -> AsyncIterator[ChannelTransports]:
    factory = ChannelTransports(
        host_policy=HostPolicy.parse("127.0.0.1"),
        secrets=secret_box,
        ca_file=pki.ca_cert,
        smtp_timeout=30,
    )
    yield factory
    await factory.aclose()


def outbound(channel: ChannelConfig, *attachments: bytes, **extra: Any) -> OutboundEmail:
    values: dict[str, Any] = {
        "outbound_id": f"out-{uuid.uuid4().hex[:12]}",
        "channel_id": channel.id,
        "conversation_id": "conv-1",
        "to": [{"name": "Ada", "address": "ada@customer.example"}],
        "bcc": [{"address": "audit@contoso.test"}],
        "subject": "Re: where is my parcel?",
        "text_body": "It left the warehouse today.\n" * 30,
        "in_reply_to": "<parent@customer.example>",
        "references": ["<root@customer.example>"],
        "attachments": [
            {"filename": f"file{i}.bin", "content": data} for i, data in enumerate(attachments)
        ],
    }
    values.update(extra)
    return OutboundEmail.model_validate(values)


async def send(
    transports: ChannelTransports,
    channel: ChannelConfig,
    email: OutboundEmail,
    *,
    before_data: BeforeData | None = None,
):
    composed = compose(email, channel, [a.content or b"" for a in email.attachments])
    return composed, await transports(channel).send(composed, before_data=before_data)


async def test_small_message_goes_in_one_sendmail_with_threading_headers_and_bcc(
    local_graph: LocalGraph, channel, transports
):
    """A ~1 KB reply is one sendMail of its MIME: Message-ID, In-Reply-To and References are
    kept, and the Bcc recipient (only in the envelope) is in the submitted copy."""
    intents: list[int] = []

    async def record_intent() -> None:  # the sender's intent: awaited before the submission
        intents.append(len(local_graph.graph_requests("/sendMail")))

    composed, result = await send(transports, channel, outbound(channel), before_data=record_intent)

    assert intents == [0]
    (sent,) = local_graph.sent
    assert sent.via == "sendMail"
    assert 900 < len(sent.mime) < 4096
    message = sent.message()
    assert message["Message-ID"] == composed.message["Message-ID"] == result.message_id
    assert message["In-Reply-To"] == "<parent@customer.example>"
    assert "<root@customer.example>" in message["References"]
    assert message["Bcc"] == "audit@contoso.test"
    assert result.transport == "graph"
    assert len(local_graph.graph_requests("/sendMail")) == 1


async def test_five_megabyte_attachment_goes_through_a_draft_and_an_upload_session(
    local_graph: LocalGraph, channel, transports
):
    """5 MB of attachment: draft from the MIME without it, the bytes in <= 4 MB chunks without a
    bearer token (the stand-in refuses one), then send; the delivered MIME carries it intact."""
    payload = bytes(range(256)) * (5 * MiB // 256)
    small = b"small attachment"
    _composed, result = await send(transports, channel, outbound(channel, payload, small))

    (sent,) = local_graph.sent
    assert sent.via == "draft"
    assert [(name, data) for name, _type, data in sent.attachments] == [
        ("file0.bin", payload),
        ("file1.bin", small),
    ]
    message = sent.message()
    assert message["In-Reply-To"] == "<parent@customer.example>"
    delivered = {part.get_filename(): part.get_content() for part in message.iter_attachments()}
    assert delivered["file0.bin"] == payload
    assert len(local_graph.graph_requests("/upload/")) == 2  # 5 MB in 3.2 MB chunks
    assert local_graph.graph_requests("/sendMail") == []
    assert local_graph.messages(MAILBOX, "drafts") == []  # the draft left with the send
    assert "draft" in result.response


async def test_over_twenty_megabytes_is_rejected_before_anything_is_sent(
    local_graph: LocalGraph, channel, transports
):
    """21 MB of attachments: MessageRejected, and Graph was not even asked for a token."""
    intents: list[str] = []

    async def record_intent() -> None:
        intents.append("sending")

    with pytest.raises(MessageRejected, match="limit"):
        await send(
            transports, channel, outbound(channel, b"\0" * (21 * MiB)), before_data=record_intent
        )

    assert intents == []  # no intent either: nothing can be "unknown" after a crash
    assert local_graph.sent == []
    assert local_graph.requests == []


async def test_throttled_mailbox_is_deferred_at_once_and_nothing_is_sent(
    local_graph: LocalGraph, channel, transports
):
    """429 with Retry-After: a retriable GraphThrottled carrying the pause, raised without
    waiting (the sender does not hold its consumer for one mailbox); the retry then sends."""
    local_graph.throttle(MAILBOX, times=1, retry_after_s=30)
    with pytest.raises(GraphThrottled) as throttled:
        await send(transports, channel, outbound(channel))
    assert throttled.value.retriable
    assert throttled.value.retry_after_s == 30
    assert local_graph.sent == []
    # the same mailbox is refused locally until the pause is over; another channel is not held
    with pytest.raises(GraphThrottled):
        await send(transports, channel, outbound(channel))
    assert len(local_graph.graph_requests("/sendMail")) == 1


async def test_short_retry_after_is_waited_out_in_place_and_sent_once(
    local_graph: LocalGraph, channel, secret_box, pki
):
    """A Retry-After within SENDER_GRAPH_THROTTLE_WAIT_S is waited out for that mailbox: the
    refused sendMail is repeated after the pause and the message sent once, after one intent;
    a Retry-After above the bound still defers at once, nothing sent."""
    factory = ChannelTransports(
        host_policy=HostPolicy.parse("127.0.0.1"),
        secrets=secret_box,
        ca_file=pki.ca_cert,
        smtp_timeout=30,
        graph_throttle_wait_s=5,
    )
    intents: list[str] = []

    async def record_intent() -> None:
        intents.append("sending")

    loop = asyncio.get_running_loop()
    try:
        local_graph.throttle(MAILBOX, times=1, retry_after_s=1)
        started = loop.time()
        await send(factory, channel, outbound(channel), before_data=record_intent)
        assert loop.time() - started >= 0.9
        assert len(local_graph.sent) == 1
        assert len(local_graph.graph_requests("/sendMail")) == 2  # refused once, then accepted
        assert intents == ["sending"]

        local_graph.throttle(MAILBOX, times=1, retry_after_s=30)
        started = loop.time()
        with pytest.raises(GraphThrottled):
            await send(factory, channel, outbound(channel))
        assert loop.time() - started < 5
        assert len(local_graph.sent) == 1
    finally:
        await factory.aclose()


async def test_lost_answer_to_sendmail_is_an_unknown_outcome_after_the_intent(
    local_graph: LocalGraph, channel, transports
):
    """sendMail carried out but its answer lost (connection closed): DeliveryUncertain - the
    message may be delivered, never resent - and the intent was recorded before it."""
    intents: list[str] = []

    async def record_intent() -> None:
        intents.append("sending")

    local_graph.lose_answers("/sendMail")
    with pytest.raises(DeliveryUncertain):
        await send(transports, channel, outbound(channel), before_data=record_intent)

    assert intents == ["sending"]
    assert len(local_graph.sent) == 1  # Graph did send it


async def test_lost_answer_to_a_draft_request_is_retriable_and_leaves_no_draft(
    local_graph: LocalGraph, channel, transports
):
    """A lost answer while the draft is built (before the send) is retriable: nothing was sent,
    no intent was recorded, and the draft is deleted."""
    intents: list[str] = []

    async def record_intent() -> None:
        intents.append("sending")

    local_graph.lose_answers("/attachments")
    with pytest.raises(TransientError) as lost:
        await send(
            transports, channel, outbound(channel, b"\1" * (4 * MiB)), before_data=record_intent
        )

    assert not isinstance(lost.value, DeliveryUncertain)
    assert lost.value.retriable
    assert intents == []
    assert local_graph.sent == []
    assert local_graph.messages(MAILBOX, "drafts") == []


async def test_revoked_sign_in_fails_the_send_at_step_token_with_nothing_sent(
    local_graph: LocalGraph, channel, transports, secret_box, pki
):
    """Delegated: after the administrator's sign-in is revoked the send fails as
    ChannelMisconfigured(step "token") - which the handler reports as a failed delivery and an
    inactive channel - and nothing is sent."""
    assert isinstance(channel.outbound, GraphOutbound)
    app = local_graph._apps[channel.outbound.client_id]
    app.user, app.redirect_uris = MAILBOX, ("https://config.example.test/oauth/callback",)
    delegated = channel.outbound.model_copy(update={"auth": GraphAuth.DELEGATED})
    tokens = GraphTokens(delegated, secrets=secret_box, ca_file=pki.ca_cert)
    flow = await tokens.start_sign_in(redirect_uri=app.redirect_uris[0], state="s~1")
    async with httpx.AsyncClient(verify=client_context(extra_ca_file=pki.ca_cert)) as browser:
        page = await browser.get(flow["auth_uri"])
    cache, _ = await tokens.finish_sign_in(flow, read_form_post(page.text)[1])
    tokens.close()
    signed_in = channel.model_copy(
        update={"outbound": delegated.model_copy(update={"token_cache": cache}), "revision": 2}
    )
    await send(transports, signed_in, outbound(signed_in))  # works while authorised
    local_graph.revoke(app.client_id)

    with pytest.raises(ChannelMisconfigured) as failed:
        await send(transports, signed_in, outbound(signed_in))

    assert failed.value.step == "token"
    assert "authorise again" in str(failed.value)
    assert len(local_graph.sent) == 1


@pytest.mark.integration
async def test_sender_service_sends_through_graph_and_reports_sent(
    local_graph: LocalGraph, channel, kafka_settings, pki, secret_keys, tmp_path, wait_until
):
    """The sender service takes an email.outbound record for an Exchange channel, sends it
    through Graph and publishes its intent ("sending") then a "sent" delivery event with
    transport graph."""
    settings = SenderSettings(
        kafka=kafka_settings,
        common=CommonSettings(
            allowed_hosts="127.0.0.1",
            ca_file=pki.ca_cert,
            secret_keys=secret_keys,  # type: ignore[arg-type]
            blob_store_url=f"file://{tmp_path}/blobs",
        ),
        retry_attempts=2,
        retry_first_backoff=0.05,
        retry_max_backoff=0.2,
    )
    email = outbound(channel)
    app = SenderApp(settings)
    stopping = asyncio.Event()
    task = asyncio.create_task(app.run(stopping))
    try:
        async with EventProducer(kafka_settings, client_id="graph-test") as producer:
            await producer.publish(kafka_settings.topics.channels, channel.id, channel)
            await asyncio.wait_for(app.ready.wait(), 60)
            await producer.publish(kafka_settings.topics.outbound, "conv-1", email)
            await wait_until(lambda: local_graph.sent, timeout=30)
        from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

        consumer = AIOKafkaConsumer(
            kafka_settings.topics.delivery,
            **kafka_settings.client_kwargs(),
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            intent = decode(DeliveryEvent, (await asyncio.wait_for(consumer.getone(), 30)).value)
            record = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)
    assert intent.status is DeliveryStatus.SENDING  # the intent, acknowledged before sendMail
    event = decode(DeliveryEvent, record.value)
    assert event.outbound_id == email.outbound_id
    assert event.status is DeliveryStatus.SENT
    assert event.transport == "graph"
    assert event.message_id == local_graph.sent[0].message()["Message-ID"]
