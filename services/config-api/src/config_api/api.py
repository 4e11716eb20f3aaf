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

from config_api import mapping, routing_test, validation
from config_api.auth import (
    AdminRequired,
    Authenticator,
    Principal,
    ViewerRequired,
    new_api_token,
    principal_of,
    token_digest,
)
from config_api.errors import (
    AlreadyExists,
    ConfigApiError,
    InvalidInput,
    NotFound,
    Problem,
    Unavailable,
)
from config_api.problems import error_response
from config_api.schemas import (
    SETTINGS_KINDS,
    BulkAction,
    BulkItem,
    BulkResult,
    CampaignIn,
    CampaignList,
    CampaignOut,
    CampaignRename,
    ChannelIn,
    ChannelList,
    ChannelOut,
    ChannelUpdate,
    FilterCreate,
    FilterIn,
    FilterListIn,
    FilterListOut,
    FilterOrder,
    RoutingTestResult,
    SampleMessage,
    StatusFilter,
    TokenCreated,
    TokenIn,
    TokenList,
    TokenOut,
    ValidateSettings,
    WhoAmI,
)
from config_api.search import ChannelQuery, select_channels
from config_api.settings import ConfigApiSettings
from config_api.store import ConfigStore
from email_channels.events import ApiToken, ChannelConfig, Filter
from email_channels.secretbox import SecretBox
from email_channels.validation import ValidationReport


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
DEFAULT_PAGE = 100
MAX_PAGE = 1000

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


@api.put("/campaigns/{campaign_id}", tags=["campaigns"], dependencies=Admin)
async def rename_campaign(
    campaign_id: CampaignId, body: CampaignRename, store: StoreDep
) -> CampaignOut:
    """Rename; the id (which campaign services filter by) stays."""
    return mapping.campaign_out(await store.rename_campaign(campaign_id, body.name))


@api.delete(
    "/campaigns/{campaign_id}",
    status_code=HTTPStatus.NO_CONTENT,
    tags=["campaigns"],
    dependencies=Admin,
    responses={409: {"description": "still used: the body lists the channels (`channels`)"}},
)
async def delete_campaign(campaign_id: CampaignId, store: StoreDep) -> None:
    """Delete, unless a channel uses it as its default or as a filter's target."""
    await store.delete_campaign(campaign_id)


# --- channels -----------------------------------------------------------------------------------


def _channel_out(store: ConfigStore, channel: ChannelConfig) -> ChannelOut:
    campaign_id = channel.default_campaign_id
    return mapping.channel_out(
        channel,
        campaign=store.campaigns.get(campaign_id) if campaign_id else None,
        filters=store.filters.get(channel.id),
        status=store.status_of(channel),
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
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE, description="channels per page (at most 1000)")
    ] = DEFAULT_PAGE,
    offset: Annotated[int, Query(ge=0, description="matches to skip (the page's start)")] = 0,
) -> ChannelList:
    """One page of the matching channels, by name; ``total`` counts every match."""
    query = ChannelQuery(
        q=q,
        name=name,
        email_address=email_address,
        default_campaign_id=default_campaign_id,
        status=status,
    )
    channels = select_channels(
        store.channels.values(), query, lambda channel: store.status_of(channel).state
    )
    page = channels[offset : offset + limit]
    return ChannelList(
        items=[_channel_out(store, c) for c in page],
        total=len(channels),
        limit=limit,
        offset=offset,
    )


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


@api.post("/channels/bulk", tags=["channels"], dependencies=Admin)
async def bulk_channels(body: BulkAction, store: StoreDep) -> BulkResult:
    """Enable, disable or delete the selected channels; each id gets its own outcome."""
    items: list[BulkItem] = []
    for channel_id in dict.fromkeys(body.ids):
        try:
            if body.action == "delete":
                await store.delete_channel(channel_id)
                status = HTTPStatus.NO_CONTENT
            else:
                await store.set_enabled(channel_id, enabled=body.action == "enable")
                status = HTTPStatus.OK
        except ConfigApiError as exc:
            items.append(BulkItem(id=channel_id, ok=False, status=exc.status_code, detail=str(exc)))
        else:
            items.append(BulkItem(id=channel_id, ok=True, status=status))
    succeeded = sum(item.ok for item in items)
    return BulkResult(items=items, succeeded=succeeded, failed=len(items) - succeeded)


# --- validate -----------------------------------------------------------------------------------


@api.post(
    "/channels/{channel_id}/validate",
    tags=["validate"],
    dependencies=Admin,
    response_model_exclude_none=False,
)
async def validate_channel(
    channel_id: ChannelId, store: StoreDep, runtime: RuntimeDep
) -> ValidationReport:
    """Contact the saved channel's servers (bounded, 60 s by default); the outcome is recorded
    on email.channel-status, so the channel shows Active once validated and working."""
    channel = store.channel(channel_id)
    report = await validation.validate(channel, settings=runtime.settings, box=runtime.box)
    await store.record_status(validation.status_reports(channel_id, report))
    return report.model_copy(update={"recorded": True})


@api.post("/channels/validate", tags=["validate"], dependencies=Admin)
async def validate_settings(
    body: ValidateSettings, store: StoreDep, runtime: RuntimeDep
) -> ValidationReport:
    """Contact the servers of settings not saved yet; nothing is recorded."""
    if body.inbound is None and body.outbound is None:
        raise InvalidInput(Problem(("body", "inbound"), "give inbound and/or outbound settings"))
    current = store.channel(body.channel_id) if body.channel_id else None
    draft = ChannelIn(
        name=current.name if current else "unsaved",
        email_address=body.email_address,
        inbound=body.inbound,
        outbound=body.outbound,
    )
    channel = mapping.channel_config(
        draft, channel_id=body.channel_id or "unsaved", box=runtime.box, current=current
    )
    return await validation.validate(channel, settings=runtime.settings, box=runtime.box)


# --- filters ------------------------------------------------------------------------------------

FilterId = ChannelId
FiltersRevision = Annotated[
    int | None, Query(ge=0, description="refuse with 409 unless this is the list's revision")
]


def _filters_out(store: ConfigStore, channel_id: str) -> FilterListOut:
    return mapping.filter_list_out(channel_id, store.filters.get(channel_id), store.campaigns.get)


@api.get("/channels/{channel_id}/filters", tags=["filters"])
async def get_filters(channel_id: ChannelId, store: StoreDep) -> FilterListOut:
    """The ordered list (first match wins) with its revision (0: never saved)."""
    store.channel(channel_id)
    return _filters_out(store, channel_id)


@api.put(
    "/channels/{channel_id}/filters",
    tags=["filters"],
    dependencies=Admin,
    responses={409: {"description": "stale revision; the body names the current one"}},
)
async def replace_filters(
    channel_id: ChannelId, body: FilterListIn, store: StoreDep
) -> FilterListOut:
    """Replace the whole ordered list; filters without an id get one."""
    rules = [mapping.filter_event(item) for item in body.filters]
    await store.update_filters(channel_id, revision=body.revision, change=lambda _old: rules)
    return _filters_out(store, channel_id)


@api.post(
    "/channels/{channel_id}/filters",
    status_code=HTTPStatus.CREATED,
    tags=["filters"],
    dependencies=Admin,
)
async def create_filter(
    channel_id: ChannelId, body: FilterCreate, store: StoreDep, revision: FiltersRevision = None
) -> FilterListOut:
    """Add one filter, at ``position`` or at the end."""
    rule = mapping.filter_event(body)

    def change(rules: list[Filter]) -> list[Filter]:
        if any(existing.id == rule.id for existing in rules):
            raise AlreadyExists(f"filter {rule.id!r} already exists on this channel")
        position = len(rules) if body.position is None else min(body.position, len(rules))
        return [*rules[:position], rule, *rules[position:]]

    await store.update_filters(channel_id, revision=revision, change=change, focus=rule.id)
    return _filters_out(store, channel_id)


@api.put("/channels/{channel_id}/filters/{filter_id}", tags=["filters"], dependencies=Admin)
async def update_filter(
    channel_id: ChannelId,
    filter_id: FilterId,
    body: FilterIn,
    store: StoreDep,
    revision: FiltersRevision = None,
) -> FilterListOut:
    """Replace one filter, keeping its place and id."""
    rule = mapping.filter_event(body, filter_id=filter_id)

    def change(rules: list[Filter]) -> list[Filter]:
        _position(rules, filter_id)
        return [rule if existing.id == filter_id else existing for existing in rules]

    await store.update_filters(channel_id, revision=revision, change=change, focus=filter_id)
    return _filters_out(store, channel_id)


@api.delete("/channels/{channel_id}/filters/{filter_id}", tags=["filters"], dependencies=Admin)
async def delete_filter(
    channel_id: ChannelId, filter_id: FilterId, store: StoreDep, revision: FiltersRevision = None
) -> FilterListOut:
    def change(rules: list[Filter]) -> list[Filter]:
        _position(rules, filter_id)
        return [existing for existing in rules if existing.id != filter_id]

    await store.update_filters(channel_id, revision=revision, change=change)
    return _filters_out(store, channel_id)


@api.post("/channels/{channel_id}/filters/reorder", tags=["filters"], dependencies=Admin)
async def reorder_filters(
    channel_id: ChannelId, body: FilterOrder, store: StoreDep
) -> FilterListOut:
    """Put the filters in the given order; ``order`` names every filter id exactly once."""

    def change(rules: list[Filter]) -> list[Filter]:
        by_id = {rule.id: rule for rule in rules}
        if sorted(body.order) != sorted(by_id):
            raise InvalidInput(
                Problem(
                    ("body", "order"),
                    f"must name each of the channel's {len(by_id)} filter ids exactly once "
                    "(GET the list for the current ids)",
                )
            )
        return [by_id[filter_id] for filter_id in body.order]

    await store.update_filters(channel_id, revision=body.revision, change=change)
    return _filters_out(store, channel_id)


@api.post("/channels/{channel_id}/filters/test", tags=["filters"])
async def test_filters(
    channel_id: ChannelId, body: SampleMessage, store: StoreDep
) -> RoutingTestResult:
    """Which filter (or the default campaign) the router would pick for a sample message,
    and why. Runs the router's own rules (``router.rules``) on the saved list."""
    channel = store.channel(channel_id)
    return routing_test.explain(
        body, channel, store.filters.get(channel_id), campaign_of=store.campaigns.get
    )


def _position(rules: list[Filter], filter_id: str) -> int:
    for index, rule in enumerate(rules):
        if rule.id == filter_id:
            return index
    raise NotFound(f"filter {filter_id!r} does not exist on this channel")


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
