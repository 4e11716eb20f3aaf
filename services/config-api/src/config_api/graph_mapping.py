"""Exchange Online (Microsoft Graph) channel settings: API bodies <-> Kafka events (pure).

The client secret is encrypted with the active key; an omitted one keeps the stored secret.
An update that keeps the tenant, client, mailbox and auth mode keeps the administrator's
authorisation (the encrypted token cache); any change of them drops it, so "Save and
authorise" (:mod:`config_api.oauth`) is needed again. Responses say whether a secret is set
and who authorised when - never a secret or a token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from config_api.errors import InvalidInput, Problem
from config_api.schemas import (
    GraphAppIn,
    GraphInboundIn,
    GraphInboundOut,
    GraphOutboundIn,
    GraphOutboundOut,
)
from email_channels.events import GraphApp, GraphInbound, GraphOutbound

if TYPE_CHECKING:
    from pydantic import SecretStr

    from email_channels.events import Inbound, Outbound
    from email_channels.secretbox import EncryptedSecret, SecretBox


def graph_inbound(body: GraphInboundIn, stored: Inbound | None, box: SecretBox) -> GraphInbound:
    kept = stored if isinstance(stored, GraphInbound) else None
    app = _app_fields(body, kept, box, ("body", "inbound", "client_secret"))
    return GraphInbound(
        **app,
        sync_all_folders=body.sync_all_folders,
        after_fetch=body.after_fetch,
        move_to_folder=body.move_to_folder,
    )


def graph_outbound(body: GraphOutboundIn, stored: Outbound | None, box: SecretBox) -> GraphOutbound:
    kept = stored if isinstance(stored, GraphOutbound) else None
    return GraphOutbound(**_app_fields(body, kept, box, ("body", "outbound", "client_secret")))


def _app_fields(
    body: GraphAppIn, stored: GraphApp | None, box: SecretBox, loc: tuple[str, ...]
) -> dict[str, object]:
    secret = _secret(body.client_secret, stored.client_secret if stored else None, box, loc)
    fields: dict[str, object] = {
        "tenant_id": body.tenant_id,
        "client_id": body.client_id,
        "client_secret": secret,
        "mailbox": body.mailbox,
        "auth": body.auth,
        "redirect_uri": body.redirect_uri,
        "authority_host": body.authority_host,
        "graph_url": body.graph_url,
    }
    same_app = stored is not None and (
        (stored.tenant_id, stored.client_id, stored.mailbox.casefold(), stored.auth)
        == (body.tenant_id, body.client_id, body.mailbox.casefold(), body.auth)
        and stored.authority_host == body.authority_host
    )
    if same_app and stored is not None and body.client_secret is None:
        # The sign-in belongs to this app and mailbox: an unrelated edit keeps it.
        fields.update(
            token_cache=stored.token_cache,
            authorised_at=stored.authorised_at,
            authorised_by=stored.authorised_by,
            pending_authorisation=stored.pending_authorisation,
        )
    return fields


def _secret(
    plaintext: SecretStr | None,
    stored: EncryptedSecret | None,
    box: SecretBox,
    loc: tuple[str, ...],
) -> EncryptedSecret:
    if plaintext is not None:
        return box.encrypt(plaintext.get_secret_value())
    if stored is None:
        raise InvalidInput(
            Problem(
                loc,
                "required: Exchange Online needs the app's client secret (omit it only to "
                "keep the one already stored)",
            )
        )
    return box.rotate(stored)


def graph_out(app: GraphApp) -> GraphInboundOut | GraphOutboundOut:
    common = {
        "tenant_id": app.tenant_id,
        "client_id": app.client_id,
        "client_secret_set": True,
        "mailbox": app.mailbox,
        "auth": app.auth,
        "redirect_uri": app.redirect_uri,
        "authority_host": app.authority_host,
        "graph_url": app.graph_url,
        "authorised": app.token_cache is not None,
        "authorised_at": app.authorised_at,
        "authorised_by": app.authorised_by,
    }
    if isinstance(app, GraphInbound):
        return GraphInboundOut(
            **common,
            sync_all_folders=app.sync_all_folders,
            after_fetch=app.after_fetch,
            move_to_folder=app.move_to_folder,
        )
    return GraphOutboundOut(**common)
