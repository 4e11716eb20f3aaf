"""HTTP routes (``/api/v1``), health probes, and the one place errors become responses."""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures at runtime.

from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from config_api import mapping
from config_api.auth import (
    AdminRequired,
    Authenticator,
    Principal,
    ViewerRequired,
    new_api_token,
    principal_of,
    token_digest,
)
from config_api.errors import ConfigApiError, Unavailable
from config_api.problems import error_response
from config_api.schemas import (
    SETTINGS_KINDS,
    CampaignIn,
    CampaignList,
    CampaignOut,
    ChannelIn,
    ChannelList,
    ChannelOut,
    ChannelUpdate,
    StatusFilter,
    TokenCreated,
    TokenIn,
    TokenList,
    TokenOut,
    WhoAmI,
)
from config_api.search import ChannelQuery, select_channels
from config_api.settings import ConfigApiSettings
from config_api.store import ConfigStore
from email_channels.events import ApiToken, ChannelConfig
from email_channels.secretbox import SecretBox


@dataclass
class Runtime:
    """What the running app holds; ``store`` is set once it has connected and caught up."""

    settings: ConfigApiSettings
    box: SecretBox
    authenticator: Authenticator | None = None
    store: ConfigStore | None = None
    start_problem: str | None = None

    def lookup_token(self, token_id: str) -> ApiToken | None:
        if self.store is None:
            raise Unavailable(self.start_problem or "starting: still reading the config topics")
        return self.store.token(token_id)


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


# Dependencies are coroutines so FastAPI runs them on the event loop, not in a thread pool.
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_store(runtime: RuntimeDep) -> ConfigStore:
    """The store, or 503 until it has read the config topics to their end."""
    store = runtime.store
    if store is None:
        raise Unavailable(runtime.start_problem or "starting: still reading the config topics")
    if not store.ready:
        raise Unavailable(store.not_ready_reason or "not ready")
    return store


async def get_box(runtime: RuntimeDep) -> SecretBox:
    return runtime.box


StoreDep = Annotated[ConfigStore, Depends(get_store)]
BoxDep = Annotated[SecretBox, Depends(get_box)]
ChannelId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@-]+$")]
CampaignId = ChannelId

bearer = HTTPBearer(
    auto_error=False,
    description="an API token (ecat_...), the operator's admin token, or an OIDC access token",
)
api = APIRouter(
    prefix="/api/v1",
    dependencies=[Security(bearer), ViewerRequired],
    responses={
        401: {"description": "not signed in (application/problem+json)"},
        403: {"description": "the role does not allow this (application/problem+json)"},
    },
)
Admin = [AdminRequired]
health = APIRouter(tags=["health"])


# --- campaigns ----------------------------------------------------------------------------------


@api.post(
    "/campaigns",
    status_code=HTTPStatus.CREATED,
    tags=["campaigns"],
    dependencies=Admin,
    responses={409: {"description": "a campaign with this id exists"}},
)
async def create_campaign(
    body: CampaignIn, store: StoreDep, request: Request, response: Response
) -> CampaignOut:
    campaign = mapping.campaign_event(body.name, campaign_id=body.id or mapping.new_id())
    saved = await store.create_campaign(campaign)
    response.headers["Location"] = str(request.url_for("get_campaign", campaign_id=saved.id))
    return mapping.campaign_out(saved)


@api.get("/campaigns", tags=["campaigns"])
async def list_campaigns(store: StoreDep) -> CampaignList:
    campaigns = sorted(store.campaigns.values(), key=lambda c: (c.name.casefold(), c.id))
    return CampaignList(items=[mapping.campaign_out(c) for c in campaigns], total=len(campaigns))


@api.get("/campaigns/{campaign_id}", tags=["campaigns"])
async def get_campaign(campaign_id: CampaignId, store: StoreDep) -> CampaignOut:
    return mapping.campaign_out(store.campaign(campaign_id))


# --- channels -----------------------------------------------------------------------------------


def _channel_out(store: ConfigStore, channel: ChannelConfig) -> ChannelOut:
    campaign_id = channel.default_campaign_id
    return mapping.channel_out(
        channel,
        campaign=store.campaigns.get(campaign_id) if campaign_id else None,
        filters=store.filters.get(channel.id),
        status=store.status_of(channel.id),
    )


@api.post(
    "/channels",
    status_code=HTTPStatus.CREATED,
    tags=["channels"],
    dependencies=Admin,
    responses={422: {"description": "invalid input; each error names its field"}},
)
async def create_channel(
    body: ChannelIn, store: StoreDep, box: BoxDep, request: Request, response: Response
) -> ChannelOut:
    config = mapping.channel_config(body, channel_id=mapping.new_id(), box=box)
    saved = await store.create_channel(config)
    response.headers["Location"] = str(request.url_for("get_channel", channel_id=saved.id))
    return _channel_out(store, saved)


@api.get("/channels", tags=["channels"])
async def list_channels(
    store: StoreDep,
    *,
    q: Annotated[str | None, Query(max_length=200, description="part of the name")] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    email_address: Annotated[str | None, Query(max_length=320)] = None,
    default_campaign_id: Annotated[
        str | None, Query(max_length=200, description="only channels using it as default")
    ] = None,
    status: StatusFilter = "all",
) -> ChannelList:
    query = ChannelQuery(
        q=q,
        name=name,
        email_address=email_address,
        default_campaign_id=default_campaign_id,
        status=status,
    )
    channels = select_channels(store.channels.values(), query, store.status_of)
    return ChannelList(items=[_channel_out(store, c) for c in channels], total=len(channels))


@api.get("/channels/{channel_id}", tags=["channels"])
async def get_channel(channel_id: ChannelId, store: StoreDep) -> ChannelOut:
    return _channel_out(store, store.channel(channel_id))


@api.put(
    "/channels/{channel_id}",
    tags=["channels"],
    dependencies=Admin,
    responses={409: {"description": "stale revision; the body names the current one"}},
)
async def update_channel(
    channel_id: ChannelId, body: ChannelUpdate, store: StoreDep, box: BoxDep
) -> ChannelOut:
    def change(current: ChannelConfig) -> ChannelConfig:
        return mapping.channel_config(body, channel_id=channel_id, box=box, current=current)

    saved = await store.update_channel(channel_id, revision=body.revision, change=change)
    return _channel_out(store, saved)


@api.delete(
    "/channels/{channel_id}",
    status_code=HTTPStatus.NO_CONTENT,
    tags=["channels"],
    dependencies=Admin,
    responses={409: {"description": "stale revision (when one was given)"}},
)
async def delete_channel(
    channel_id: ChannelId,
    store: StoreDep,
    revision: Annotated[
        int | None, Query(ge=1, description="refuse with 409 unless this is still current")
    ] = None,
) -> None:
    """Delete permanently: tombstones on email.channels and email.filters."""
    await store.delete_channel(channel_id, revision=revision)


# --- sign-in and API tokens ---------------------------------------------------------------------


@api.get("/me", tags=["sign-in"])
async def who_am_i(request: Request) -> WhoAmI:
    """Who the credential belongs to, and its role (the admin page shows it)."""
    principal = principal_of(request)
    return WhoAmI(subject=principal.subject, role=principal.role.value, method=principal.method)


def _token_out(token: ApiToken) -> TokenOut:
    return TokenOut(
        id=token.id,
        name=token.name,
        role=token.role,
        created_by=token.created_by,
        created_at=token.created_at,
    )


@api.post("/tokens", status_code=HTTPStatus.CREATED, tags=["sign-in"], dependencies=Admin)
async def create_token(body: TokenIn, store: StoreDep, request: Request) -> TokenCreated:
    """A new static API token; the token is in this response only (stored hashed)."""
    principal: Principal = principal_of(request)
    token_id, token = new_api_token()
    saved = await store.create_token(
        ApiToken(
            id=token_id,
            name=body.name,
            role=body.role,
            sha256=token_digest(token),
            created_by=principal.subject,
        )
    )
    return TokenCreated(**_token_out(saved).model_dump(), token=token)


@api.get("/tokens", tags=["sign-in"], dependencies=Admin)
async def list_tokens(store: StoreDep) -> TokenList:
    tokens = sorted(store.tokens.values(), key=lambda t: (t.created_at, t.id))
    return TokenList(items=[_token_out(t) for t in tokens], total=len(tokens))


@api.delete(
    "/tokens/{token_id}",
    status_code=HTTPStatus.NO_CONTENT,
    tags=["sign-in"],
    dependencies=Admin,
)
async def revoke_token(token_id: ChannelId, store: StoreDep) -> None:
    """Revoke: the token stops working as soon as this answers."""
    await store.revoke_token(token_id)


# --- health -------------------------------------------------------------------------------------


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@health.get("/readyz", responses={503: {"description": "not caught up with Kafka yet"}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Ready once the config topics have been read to their end (readiness)."""
    store = runtime.store
    if store is None or not store.ready:
        reason = (
            store.not_ready_reason
            if store is not None
            else runtime.start_problem or "starting: connecting to Kafka"
        )
        return JSONResponse(
            {"status": "not ready", "reason": reason}, status_code=503, headers={"Retry-After": "2"}
        )
    return JSONResponse(
        {"status": "ready", "channels": len(store.channels), "campaigns": len(store.campaigns)}
    )


@health.get("/metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


# --- errors -------------------------------------------------------------------------------------


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to its response, in this one place. Bodies never echo input values."""

    async def on_config_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ConfigApiError)
        return error_response(exc)

    async def on_request_invalid(_request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's default echoes the offending input, and for a missing field the whole
        # parent object — a password included. Keep only where and why.
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(
            {"detail": [_safe_error(error) for error in exc.errors()]},
            status_code=HTTPStatus.UNPROCESSABLE_ENTITY,
        )

    app.add_exception_handler(ConfigApiError, on_config_error)
    app.add_exception_handler(RequestValidationError, on_request_invalid)


def _safe_error(error: Any) -> dict[str, Any]:
    loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
    # inbound/outbound are unions told apart by ``kind``: pydantic puts the kind into the loc
    # ("outbound", "smtp", "password"); the field is named without it.
    loc = [
        part
        for i, part in enumerate(loc)
        if not (i > 0 and loc[i - 1] in {"inbound", "outbound"} and part in SETTINGS_KINDS)
    ]
    msg = str(error.get("msg", "invalid"))
    return {
        "type": str(error.get("type", "value_error")),
        "loc": loc,
        "field": ".".join(str(part) for part in loc[1:]) or (str(loc[0]) if loc else ""),
        "msg": msg.removeprefix("Value error, "),
    }
