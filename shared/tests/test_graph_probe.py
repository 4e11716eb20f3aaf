"""The Graph validate probe against the local identity/Graph stand-in (real msal)."""

from __future__ import annotations

import uuid

import pytest

from devstack.graph import AppRegistration
from email_channels.errors import ChannelMisconfigured
from email_channels.events import GraphOutbound
from email_channels.graph_auth import GraphTokenError
from email_channels.graph_probe import probe_graph
from email_channels.hostpolicy import HostPolicy

MAILBOX = "support@contoso.test"


def settings(
    local_graph,
    secret_box,
    *,
    permissions=frozenset({"Mail.ReadWrite", "Mail.Send"}),
    mailbox=MAILBOX,
    secret="app~secret.value",
    **extra,
) -> GraphOutbound:
    app = local_graph.register_app(
        AppRegistration(
            tenant_id=f"tenant-{uuid.uuid4().hex[:6]}",
            client_id=str(uuid.uuid4()),
            client_secret="app~secret.value",
            permissions=permissions,
        )
    )
    return GraphOutbound(
        tenant_id=app.tenant_id,
        client_id=app.client_id,
        client_secret=secret_box.encrypt(secret),
        mailbox=mailbox,
        authority_host=local_graph.authority_host,
        graph_url=local_graph.graph_url,
        **extra,
    )


async def probe(app, secret_box, pki, direction="outbound"):
    return await probe_graph(
        app,
        direction=direction,
        secrets=secret_box,
        ca_file=pki.ca_cert,
        host_policy=HostPolicy.parse("127.0.0.1"),
        timeout_s=20,
    )


async def test_probe_passes_token_mailbox_and_send_permission(local_graph, secret_box, pki):
    """A working app and mailbox: every step passes, and nothing is sent."""
    local_graph.add_mailbox(MAILBOX)
    assert await probe(settings(local_graph, secret_box), secret_box, pki) == [
        "token",
        "mailbox",
        "send_permission",
    ]
    assert local_graph.sent == []


async def test_probe_names_the_failing_step(local_graph, secret_box, pki):
    """Wrong secret -> token (field client_secret); a distribution group -> mailbox, saying
    groups cannot be validated; no Mail.Send -> permission (outbound only)."""
    local_graph.add_mailbox(MAILBOX)
    local_graph.add_group("all-staff@contoso.test")
    with pytest.raises(GraphTokenError) as secret:
        await probe(settings(local_graph, secret_box, secret="wrong"), secret_box, pki)
    assert (secret.value.step, secret.value.field) == ("token", "client_secret")

    group = settings(local_graph, secret_box, mailbox="all-staff@contoso.test")
    with pytest.raises(ChannelMisconfigured) as mailbox:
        await probe(group, secret_box, pki)
    assert mailbox.value.step == "mailbox"
    assert "distribution group, it cannot be validated" in str(mailbox.value)

    read_only = settings(local_graph, secret_box, permissions=frozenset({"Mail.ReadWrite"}))
    assert await probe(read_only, secret_box, pki, "inbound") == ["token", "mailbox"]
    with pytest.raises(ChannelMisconfigured) as permission:
        await probe(read_only, secret_box, pki)
    assert permission.value.step == "permission"
    assert "Mail.Send" in str(permission.value)
