"""Exchange Online channels through the config API, against the local identity/Graph stand-in.

App-only and delegated ("Save and authorise") end to end: the channel is saved through the API,
the administrator's browser is played with httpx (sign-in page -> form_post -> our callback),
and the stored channel record is then used by the real fetcher source and sender transport.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from devstack.graph import AppRegistration, read_form_post
from email_channels.codec import decode
from email_channels.events import ChannelConfig, FetchCursor, GraphApp, OutboundEmail
from email_channels.hostpolicy import HostPolicy
from email_channels.tls import client_context
from fetcher.sources.graph import GraphOptions, GraphSourceFactory
from sender.compose import compose
from sender.transports import ChannelTransports

if TYPE_CHECKING:
    from devstack.certs import TestPki
    from devstack.graph import LocalGraph
    from email_channels.settings import KafkaSettings

pytestmark = pytest.mark.integration

MAILBOX = "support@contoso.test"
CALLBACK = "http://config-api/oauth/callback"  # the test client's base URL + /oauth/callback


@pytest.fixture
def api_settings(api_settings, pki: TestPki):
    """The config API trusts the test CA (the stand-in's certificate) like an operator would."""
    common = api_settings.common.model_copy(
        update={"ca_file": pki.ca_cert, "allowed_hosts": "127.0.0.1"}
    )
    return api_settings.model_copy(update={"common": common})


@pytest.fixture
def azure_app(local_graph: LocalGraph) -> AppRegistration:
    local_graph.add_mailbox(MAILBOX)
    return local_graph.register_app(
        AppRegistration(
            tenant_id=f"tenant-{uuid.uuid4().hex[:6]}",
            client_id=str(uuid.uuid4()),
            client_secret="app~secret.value",
            redirect_uris=(CALLBACK,),
            user=MAILBOX,
        )
    )


def graph_settings(
    local_graph: LocalGraph,
    app: AppRegistration,
    kind_extra: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "kind": "graph",
        "tenant_id": app.tenant_id,
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        "mailbox": MAILBOX,
        "authority_host": local_graph.authority_host,
        "graph_url": local_graph.graph_url,
        **(kind_extra or {}),
        **extra,
    }


async def stored_channel(
    kafka_settings: KafkaSettings, read_topic, channel_id: str
) -> ChannelConfig:
    records = await read_topic(kafka_settings, kafka_settings.topics.channels)
    values = [value for key, value in records if key == channel_id and value is not None]
    return decode(ChannelConfig, values[-1])


async def fetch_and_send(channel: ChannelConfig, secret_box, pki: TestPki) -> list[bytes | None]:
    """Use the stored channel as the fetcher and the sender would: read the inbox, send one."""
    source = GraphSourceFactory(secret_box=secret_box, options=GraphOptions(ca_file=pki.ca_cert))(
        channel
    )
    await source.open()
    try:
        pending = await source.pending(FetchCursor(channel_id=channel.id))
        fetched = [item.raw for item in await source.fetch(pending.messages)]
    finally:
        await source.close()
    transports = ChannelTransports(
        host_policy=HostPolicy.parse("127.0.0.1"),
        secrets=secret_box,
        ca_file=pki.ca_cert,
        smtp_timeout=30,
    )
    email = OutboundEmail(
        outbound_id="out-1",
        channel_id=channel.id,
        to=[{"address": "ada@customer.example"}],  # type: ignore[list-item]
        subject="Re: hello",
        text_body="Thanks!",
    )
    composed = compose(email, channel)
    try:
        await transports(channel).send(composed)
    finally:
        await transports.aclose()
    return fetched


async def test_app_only_channel_saved_through_the_api_reads_and_sends(
    api, local_graph, azure_app, kafka_settings, read_topic, secret_box, pki
):
    """An app-only Exchange channel created through the API is stored with its secret encrypted,
    shown without it, and works for the fetcher source and the sender transport."""
    local_graph.deliver(MAILBOX, b"To: support@contoso.test\r\nSubject: hi\r\n\r\nhello\r\n")
    response = await api.post(
        "/api/v1/channels",
        json={
            "name": "Exchange app-only",
            "email_address": MAILBOX,
            "inbound": graph_settings(local_graph, azure_app),
            "outbound": graph_settings(local_graph, azure_app),
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["inbound"]["kind"] == "graph"
    assert body["inbound"]["client_secret_set"] is True
    assert azure_app.client_secret not in response.text

    channel = await stored_channel(kafka_settings, read_topic, body["id"])
    assert isinstance(channel.inbound, GraphApp)
    assert secret_box.decrypt(channel.inbound.client_secret) == azure_app.client_secret
    fetched = await fetch_and_send(channel, secret_box, pki)
    assert fetched == [b"To: support@contoso.test\r\nSubject: hi\r\n\r\nhello\r\n"]
    assert [sent.via for sent in local_graph.sent] == ["sendMail"]


async def test_save_and_authorise_stores_the_encrypted_token_cache_and_never_returns_it(
    api, local_graph, azure_app, kafka_settings, read_topic, secret_box, pki
):
    """Delegated: authorise returns Microsoft's sign-in URL (PKCE, state); the browser's
    form_post to our open callback is redeemed; the channel then reads and sends as the user,
    and neither the API nor the record shows a token."""
    delegated = {"auth": "delegated"}
    response = await api.post(
        "/api/v1/channels",
        json={
            "name": "Exchange delegated",
            "email_address": MAILBOX,
            "inbound": graph_settings(local_graph, azure_app, delegated),
            "outbound": graph_settings(local_graph, azure_app, delegated),
        },
    )
    assert response.status_code == 201, response.text
    channel_id = response.json()["id"]
    assert response.json()["inbound"]["authorised"] is False

    started = await api.post(f"/api/v1/channels/{channel_id}/authorise")
    assert started.status_code == 200, started.text
    sign_in = started.json()
    assert sign_in["redirect_uri"] == CALLBACK
    assert sign_in["directions"] == ["inbound", "outbound"]
    assert "code_challenge_method=S256" in sign_in["authorization_url"]
    assert f"state={channel_id}" in sign_in["authorization_url"]

    async with httpx.AsyncClient(verify=client_context(extra_ca_file=pki.ca_cert)) as browser:
        page = await browser.get(sign_in["authorization_url"])
    action, answer = read_form_post(page.text)
    assert action == CALLBACK
    # The browser arrives from Microsoft without our bearer token: the callback needs none.
    async with httpx.AsyncClient(transport=api._transport, base_url=api.base_url) as anonymous:
        done = await anonymous.post("/oauth/callback", data=answer)
        replay = await anonymous.post("/oauth/callback", data=answer)
    assert done.status_code == 200, done.text
    assert done.json()["authorised_by"] == "admin-token"
    assert done.json()["signed_in_as"] == MAILBOX
    assert "token" not in done.text.replace("admin-token", "")
    assert replay.status_code == 422  # single use: the pending sign-in is gone

    shown = (await api.get(f"/api/v1/channels/{channel_id}")).json()
    assert shown["inbound"]["authorised"] is True
    assert shown["outbound"]["authorised_by"] == "admin-token"
    assert "token_cache" not in str(shown)

    channel = await stored_channel(kafka_settings, read_topic, channel_id)
    assert isinstance(channel.inbound, GraphApp)
    assert channel.inbound.token_cache is not None
    assert channel.inbound.pending_authorisation is None
    assert "RefreshToken" not in channel.model_dump_json()
    assert "RefreshToken" in secret_box.decrypt(channel.inbound.token_cache)

    local_graph.deliver(MAILBOX, b"To: support@contoso.test\r\nSubject: hi\r\n\r\nhello\r\n")
    assert len(await fetch_and_send(channel, secret_box, pki)) == 1
    assert len(local_graph.sent) == 1

    # An unrelated edit (the name) keeps the authorisation.
    current = channel.revision
    edit = await api.put(
        f"/api/v1/channels/{channel_id}",
        json={
            "name": "Exchange delegated (renamed)",
            "email_address": MAILBOX,
            "revision": current,
            "inbound": {**graph_settings(local_graph, azure_app, delegated), "client_secret": None},
            "outbound": {
                **graph_settings(local_graph, azure_app, delegated),
                "client_secret": None,
            },
        },
    )
    assert edit.status_code == 200, edit.text
    assert edit.json()["inbound"]["authorised"] is True


async def test_whitespace_in_client_id_tenant_or_secret_is_refused_naming_the_field(
    api, local_graph, azure_app
):
    """A stray space (copy and paste) is a 422 that names the field; the value is not echoed."""
    for field in ("client_id", "tenant_id", "client_secret"):
        settings = graph_settings(local_graph, azure_app)
        settings[field] = f" {settings[field]}"
        response = await api.post("/api/v1/channels", json={"name": "padded", "inbound": settings})
        assert response.status_code == 422, response.text
        (problem,) = response.json()["detail"]
        assert problem["field"].endswith(field)
        assert "space" in problem["msg"]
        assert azure_app.client_secret not in response.text


async def test_wrong_or_unregistered_redirect_uri_is_reported(api, local_graph, azure_app, pki):
    """A redirect URI that is not this API's callback is refused naming redirect_uri; one that is
    not registered in Azure gets Microsoft's AADSTS50011 on the sign-in page."""
    delegated = {"auth": "delegated"}
    wrong = await api.post(
        "/api/v1/channels",
        json={
            "name": "wrong redirect",
            "inbound": graph_settings(
                local_graph,
                azure_app,
                delegated,
                redirect_uri="https://config.example.test/elsewhere",
            ),
        },
    )
    refused = await api.post(f"/api/v1/channels/{wrong.json()['id']}/authorise")
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["field"] == "inbound.redirect_uri"

    unregistered = await api.post(
        "/api/v1/channels",
        json={
            "name": "unregistered redirect",
            "inbound": graph_settings(
                local_graph,
                azure_app,
                delegated,
                redirect_uri="https://config.example.test/oauth/callback",
            ),
        },
    )
    started = await api.post(f"/api/v1/channels/{unregistered.json()['id']}/authorise")
    assert started.status_code == 200
    async with httpx.AsyncClient(verify=client_context(extra_ca_file=pki.ca_cert)) as browser:
        page = await browser.get(started.json()["authorization_url"])
    assert page.status_code == 400
    assert "AADSTS50011" in page.text

    forged = await api.post("/oauth/callback", data={"code": "x", "state": "nope~forged"})
    assert forged.status_code == 422
    assert forged.json()["detail"][0]["field"] == "state"


async def test_validate_probes_exchange_settings_and_names_a_distribution_group(
    api, local_graph, azure_app
):
    """Validate on Exchange settings runs token, mailbox and send permission; a distribution
    group address fails at inbound.mailbox with a message saying groups cannot be validated."""
    body = {
        "name": "Exchange validated",
        "email_address": MAILBOX,
        "inbound": graph_settings(local_graph, azure_app),
        "outbound": graph_settings(local_graph, azure_app),
    }
    channel_id = (await api.post("/api/v1/channels", json=body)).json()["id"]
    report = (await api.post(f"/api/v1/channels/{channel_id}/validate")).json()
    assert report["ok"], report
    assert [s["name"] for s in report["inbound"]["steps"]] == ["token", "mailbox"]
    assert [s["name"] for s in report["outbound"]["steps"]] == [
        "token",
        "mailbox",
        "send_permission",
    ]

    local_graph.add_group("all-staff@contoso.test")
    group = graph_settings(local_graph, azure_app, mailbox="all-staff@contoso.test")
    unsaved = (await api.post("/api/v1/channels/validate", json={"inbound": group})).json()
    assert unsaved["failing_step"] == "inbound.mailbox"
    assert "distribution group, it cannot be validated" in unsaved["inbound"]["message"]
    assert local_graph.sent == []
