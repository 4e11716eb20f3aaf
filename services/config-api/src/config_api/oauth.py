"""'Save and authorise': the delegated Exchange Online sign-in (authorisation code + PKCE).

1. ``POST /api/v1/channels/{id}/authorise`` (role admin), after the channel was saved with
   ``auth: delegated``: msal starts an auth-code flow (PKCE verifier, nonce, ``state``). The
   flow, the channel and the signed-in administrator are stored **encrypted** on the channel
   (``pending_authorisation``; a config write like any other, so every replica can finish it).
   The answer is the Microsoft sign-in URL for the administrator's browser.
2. Microsoft posts the answer to the redirect URI (``response_mode=form_post``: the code never
   appears in a URL) - ``POST /oauth/callback``, registered in Azure. A browser arriving from
   Microsoft carries no bearer token, so this route is outside ``/api`` and open; what binds the
   answer to the channel and the administrator is the ``state``: unguessable, single-use, bound
   to the pending sign-in (msal checks it), valid for :data:`SIGN_IN_TTL`.
3. msal redeems the code; the token cache (with the refresh token) is encrypted with the secret
   box and stored on the channel's delegated Graph settings (inbound and outbound when both use
   the app), with who authorised and when. It is never returned by the API. The fetcher and the
   sender pick the new channel revision up; an Inactive channel recovers.
4. The administrator's browser (it asks for HTML) is then sent back to the admin page (303)
   with ``?authorised=<channel id>`` or ``?authorise_error=<message>&channel=<id>``; the page
   shows the outcome. Other clients get the JSON answer (or the problem) as before.

Errors name what to fix: the redirect URI (not this API's callback, or not registered in Azure:
AADSTS50011), the client secret, the tenant, or a sign-in that expired or was refused.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures at runtime.

import json
import re
import secrets
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl

import structlog
from fastapi import APIRouter, Request, Response, Security
from fastapi.responses import RedirectResponse
from pydantic import BaseModel

from config_api.api import BoxDep, ChannelId, Runtime, RuntimeDep, StoreDep, bearer
from config_api.auth import AdminRequired, Principal
from config_api.errors import (
    ConfigApiError,
    Conflict,
    InvalidInput,
    NotFound,
    Problem,
    Unavailable,
)
from config_api.store import ConfigStore
from email_channels.errors import PipelineError
from email_channels.events import ChannelConfig, GraphApp, GraphAuth, utcnow
from email_channels.graph_auth import (
    GraphTokenError,
    GraphTokens,
    flow_from_text,
    flow_to_text,
    map_token_error,
)
from email_channels.graph_client import check_custom_hosts
from email_channels.secretbox import SecretBox, SecretDecryptError

log = structlog.get_logger(__name__)

CALLBACK_PATH = "/oauth/callback"
SIGN_IN_TTL = timedelta(minutes=15)
_STATE_SEPARATOR = "~"  # never in a channel id ([A-Za-z0-9._:@-])
_AADSTS = re.compile(r"AADSTS(\d+)")

router = APIRouter(tags=["exchange sign-in"])


class AuthoriseOut(BaseModel):
    authorization_url: str
    redirect_uri: str
    expires_at: datetime
    directions: list[str]


class AuthorisedOut(BaseModel):
    channel_id: str
    authorised: bool
    authorised_by: str
    signed_in_as: str | None
    directions: list[str]


@router.post(
    "/api/v1/channels/{channel_id}/authorise",
    dependencies=[Security(bearer)],
    responses={409: {"description": "the channel has no delegated Exchange settings"}},
)
async def authorise(
    channel_id: ChannelId,
    *,
    request: Request,
    store: StoreDep,
    box: BoxDep,
    runtime: RuntimeDep,
    admin: Annotated[Principal, AdminRequired],
) -> AuthoriseOut:
    """Start the administrator's Microsoft sign-in for the channel's delegated Exchange access."""
    channel = store.channel(channel_id)
    directions = _delegated(channel)
    if not directions:
        raise Conflict(
            f"channel {channel_id!r} has no Exchange Online settings with auth 'delegated'; "
            "save it with them first"
        )
    app = _app(channel, directions[0])
    callback = str(request.url_for("oauth_callback"))
    redirect_uri = app.redirect_uri or callback
    if not redirect_uri.split("?")[0].endswith(CALLBACK_PATH):
        raise InvalidInput(
            Problem(
                ("channel", directions[0], "redirect_uri"),
                f"must be this API's callback ({callback}): Microsoft sends the sign-in answer "
                "there; register that URI for the app in Azure",
            )
        )
    state = f"{channel_id}{_STATE_SEPARATOR}{secrets.token_urlsafe(32)}"
    tokens = _tokens(app, box, runtime)
    try:
        await check_custom_hosts(app, runtime.settings.common.host_policy())
        flow = await tokens.start_sign_in(redirect_uri=redirect_uri, state=state)
    except PipelineError as exc:
        raise _problem(exc, directions[0]) from exc
    finally:
        tokens.close()
    expires_at = utcnow() + SIGN_IN_TTL
    pending = box.encrypt(
        json.dumps(
            {
                "flow": flow_to_text(flow),
                "admin": admin.subject,
                "channel_id": channel_id,
                "expires_at": expires_at.isoformat(),
            }
        )
    )

    def change(current: ChannelConfig) -> ChannelConfig:
        return _with_graph(current, directions, pending_authorisation=pending)

    await store.update_channel(channel_id, revision=channel.revision, change=change)
    log.info("exchange sign-in started", channel_id=channel_id, admin=admin.subject)
    return AuthoriseOut(
        authorization_url=str(flow["auth_uri"]),
        redirect_uri=redirect_uri,
        expires_at=expires_at,
        directions=directions,
    )


@router.post(
    CALLBACK_PATH,
    name="oauth_callback",
    response_model=AuthorisedOut,
    responses={303: {"description": "a browser (Accept: text/html) goes back to the admin page"}},
)
async def oauth_callback(
    request: Request, store: StoreDep, box: BoxDep, runtime: RuntimeDep
) -> AuthorisedOut | Response:
    """Microsoft's answer (form_post): redeem the code, keep the encrypted token cache.

    An administrator's browser (it asks for HTML) is sent back to the admin page with the
    outcome in the query (``authorised=<channel id>`` or ``authorise_error=<message>``);
    other clients get the JSON answer or the error."""
    answer = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
    if "text/html" not in request.headers.get("accept", ""):
        return await _finish(answer, store, box, runtime)
    channel_id = answer.get("state", "").split(_STATE_SEPARATOR, 1)[0]
    try:
        done = await _finish(answer, store, box, runtime)
    except ConfigApiError as exc:
        outcome = {"authorise_error": str(exc), "channel": channel_id}
    else:
        outcome = {"authorised": done.channel_id}
    page = request.url_for("admin_page").include_query_params(**outcome)
    return RedirectResponse(str(page), status_code=303)


async def _finish(
    answer: dict[str, str], store: ConfigStore, box: SecretBox, runtime: Runtime
) -> AuthorisedOut:
    """Check the answer against the pending sign-in, redeem the code, store the token cache."""
    state = answer.get("state", "")
    channel_id = state.split(_STATE_SEPARATOR, 1)[0]
    try:
        channel = store.channel(channel_id) if _STATE_SEPARATOR in state else None
    except NotFound:
        channel = None
    directions = _delegated(channel) if channel else []
    pending = _pending(channel, directions, box) if channel and directions else None
    if channel is None or pending is None:
        raise InvalidInput(
            Problem(("body", "state"), "unknown or finished sign-in: start it again (authorise)")
        )
    if datetime.fromisoformat(pending["expires_at"]) < utcnow():
        raise InvalidInput(Problem(("body", "state"), "the sign-in expired: start it again"))
    app = _app(channel, directions[0])
    if "error" in answer:  # Microsoft refused: consent denied, redirect URI, ...
        description = answer.get("error_description", "")
        codes = [int(code) for code in _AADSTS.findall(description)]
        refusal = {"error": answer["error"], "error_description": description, "error_codes": codes}
        raise _problem(map_token_error(refusal, delegated=True), directions[0])
    tokens = _tokens(app, box, runtime)
    try:
        await check_custom_hosts(app, runtime.settings.common.host_policy())
        cache, username = await tokens.finish_sign_in(flow_from_text(pending["flow"]), answer)
    except PipelineError as exc:
        raise _problem(exc, directions[0]) from exc
    finally:
        tokens.close()
    admin = str(pending["admin"])
    now = utcnow()

    def change(current: ChannelConfig) -> ChannelConfig:
        return _with_graph(
            current,
            directions,
            token_cache=cache,
            authorised_at=now,
            authorised_by=admin,
            pending_authorisation=None,
        )

    await store.update_channel(channel_id, revision=channel.revision, change=change)
    log.info("exchange sign-in finished", channel_id=channel_id, admin=admin)
    return AuthorisedOut(
        channel_id=channel_id,
        authorised=True,
        authorised_by=admin,
        signed_in_as=username,
        directions=directions,
    )


# --- helpers ------------------------------------------------------------------------------------


def _delegated(channel: ChannelConfig) -> list[str]:
    """Which directions sign in with the channel's delegated app (both share one sign-in)."""
    found: list[str] = []
    first: GraphApp | None = None
    for direction, settings in (("inbound", channel.inbound), ("outbound", channel.outbound)):
        if not isinstance(settings, GraphApp) or settings.auth is not GraphAuth.DELEGATED:
            continue
        if first is not None and (settings.tenant_id, settings.client_id) != (
            first.tenant_id,
            first.client_id,
        ):
            continue  # another app: it needs its own sign-in (not offered by this release)
        first = first or settings
        found.append(direction)
    return found


def _app(channel: ChannelConfig, direction: str) -> GraphApp:
    settings = channel.inbound if direction == "inbound" else channel.outbound
    assert isinstance(settings, GraphApp)
    return settings


def _with_graph(channel: ChannelConfig, directions: list[str], **fields: Any) -> ChannelConfig:
    update: dict[str, Any] = {"revision": channel.revision + 1, "updated_at": utcnow()}
    for direction in directions:
        update[direction] = _app(channel, direction).model_copy(update=fields)
    return channel.model_copy(update=update)


def _pending(
    channel: ChannelConfig, directions: list[str], box: SecretBox
) -> dict[str, Any] | None:
    secret = _app(channel, directions[0]).pending_authorisation
    if secret is None:
        return None
    try:
        pending: dict[str, Any] = json.loads(box.decrypt(secret))
    except (SecretDecryptError, ValueError):
        return None
    return pending if pending.get("channel_id") == channel.id else None


def _tokens(app: GraphApp, box: SecretBox, runtime: Any) -> GraphTokens:
    return GraphTokens(app, secrets=box, ca_file=runtime.settings.common.ca_file)


def _problem(exc: PipelineError, direction: str) -> Exception:
    """A token error as a 422 naming the channel field at fault, or 503 when retriable."""
    if exc.retriable:
        return Unavailable(f"the Microsoft identity platform is unavailable: {exc}")
    field = exc.field if isinstance(exc, GraphTokenError) and exc.field else "authorisation"
    return InvalidInput(Problem(("channel", direction, field), str(exc)))
