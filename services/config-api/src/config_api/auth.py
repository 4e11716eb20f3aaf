"""Sign-in and roles: who is calling, and may they do this?

Every ``/api/...`` route needs ``Authorization: Bearer <credential>``; ``/healthz``,
``/readyz``, the OpenAPI document and the admin page's static files do not (the page holds no
data: it asks for a token and sends it with every API call). ``/metrics`` needs one when
``CONFIG_API_METRICS_REQUIRE_AUTH`` is set. Three kinds of credential:

1. **OIDC bearer JWTs** from the platform's identity provider, verified with PyJWT against the
   provider's JWKS (keys cached, refreshed on an unknown ``kid``): signature, ``exp``/``nbf``,
   ``iss``, ``aud`` and ``sub`` are required. The roles claim (``CONFIG_API_OIDC_ROLES_CLAIM``,
   a dotted path) is mapped to our two roles.
2. **Static API tokens** for automation, created / listed / revoked by an admin
   (``/api/v1/tokens``). They look like ``ecat_<id>_<secret>``; only the SHA-256 of the whole
   token is stored (on ``email.api-tokens``), compared in constant time.
3. **The operator's admin token**, ``CONFIG_API_ADMIN_TOKEN`` (``make run`` generates one and
   prints it), so a fresh install can sign in and create the rest.

Roles: ``viewer`` reads, ``admin`` also writes. No or bad credentials -> 401, wrong role ->
403, both as ``application/problem+json``. A credential is never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

import jwt
import structlog
from fastapi import Depends, Request
from starlette.datastructures import Headers

from config_api.errors import ConfigApiError, Forbidden, NotAuthenticated, Unavailable
from config_api.problems import error_response
from email_channels.tls import client_context

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import ASGIApp, Receive, Scope, Send

    from config_api.settings import ConfigApiSettings
    from email_channels.events import ApiToken

log = structlog.get_logger(__name__)

TOKEN_PREFIX = "ecat_"  # noqa: S105 - a prefix, not a secret
"""Email Channels API token: tells a static token from a JWT at a glance (and to scanners)."""


class Role(StrEnum):
    VIEWER = "viewer"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        return self is Role.ADMIN or needed is Role.VIEWER


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``subject`` is the JWT ``sub``, ``token:<id>``, or ``admin-token``."""

    subject: str
    role: Role
    method: Literal["oidc", "api-token", "admin-token"]


# --- static API tokens ---------------------------------------------------------------------------


def new_api_token() -> tuple[str, str]:
    """A fresh ``(token id, token)``; the token is shown once and stored only hashed."""
    token_id = secrets.token_hex(8)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_id(token: str) -> str | None:
    rest = token.removeprefix(TOKEN_PREFIX)
    token_id, sep, secret = rest.partition("_")
    return token_id if sep and token_id and secret else None


# --- OIDC ---------------------------------------------------------------------------------------


class OidcVerifier:
    """Verifies bearer JWTs of one issuer against its JWKS (PyJWT)."""

    def __init__(self, settings: ConfigApiSettings) -> None:
        assert settings.oidc_jwks_url is not None
        self._issuer = settings.oidc_issuer
        self._audience = settings.oidc_audience
        self._algorithms = _csv(settings.oidc_algorithms)
        self._leeway = settings.oidc_leeway_s
        self._roles_claim = settings.oidc_roles_claim
        self._admin_roles = set(_csv(settings.oidc_admin_roles))
        self._viewer_roles = set(_csv(settings.oidc_viewer_roles))
        ca_file = settings.common.ca_file
        self._jwks = jwt.PyJWKClient(
            settings.oidc_jwks_url,
            cache_keys=True,
            lifespan=300,
            timeout=int(max(1, settings.oidc_jwks_timeout_s)),
            # A provider behind a private CA: trust EMAIL_CHANNELS_CA_FILE too.
            ssl_context=client_context(extra_ca_file=ca_file) if ca_file else None,
        )

    async def verify(self, token: str) -> Principal:
        try:
            # PyJWKClient fetches with urllib (blocking): off the event loop.
            key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            raise Unavailable(
                "cannot verify the sign-in token: the identity provider's keys (JWKS) cannot "
                "be fetched"
            ) from exc
        except jwt.PyJWTError as exc:
            raise NotAuthenticated(
                f"the bearer token is not valid: {exc}", token_sent=True
            ) from exc
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise NotAuthenticated(
                "the bearer token has expired: sign in again", token_sent=True
            ) from exc
        except jwt.PyJWTError as exc:
            raise NotAuthenticated(
                f"the bearer token is not valid: {exc}", token_sent=True
            ) from exc
        subject = str(claims["sub"])
        roles = _claim_values(claims, self._roles_claim)
        if roles & self._admin_roles:
            role = Role.ADMIN
        elif roles & self._viewer_roles:
            role = Role.VIEWER
        else:
            raise Forbidden(
                f"signed in as {subject!r}, but the token's {self._roles_claim!r} claim holds "
                "neither an admin nor a viewer role"
            )
        return Principal(subject=subject, role=role, method="oidc")


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _claim_values(claims: dict[str, Any], path: str) -> set[str]:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {str(item) for item in value}
    return set()


# --- the authenticator --------------------------------------------------------------------------


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal`, or raises 401/403/503."""

    def __init__(
        self,
        settings: ConfigApiSettings,
        *,
        lookup_token: Callable[[str], ApiToken | None],
    ) -> None:
        admin = settings.admin_token
        self._admin_digest = token_digest(admin.get_secret_value()) if admin else None
        self._oidc = OidcVerifier(settings) if settings.oidc_enabled else None
        self._lookup_token = lookup_token

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise NotAuthenticated(
                "sign in: send 'Authorization: Bearer <token>' (an API token or an OIDC token)"
            )
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise NotAuthenticated(
                "the Authorization header must be 'Bearer <token>'", token_sent=True
            )
        if self._admin_digest is not None and hmac.compare_digest(
            token_digest(credential), self._admin_digest
        ):
            return Principal(subject="admin-token", role=Role.ADMIN, method="admin-token")
        if credential.startswith(TOKEN_PREFIX):
            return self._api_token(credential)
        if self._oidc is None:
            raise NotAuthenticated("unknown token", token_sent=True)
        return await self._oidc.verify(credential)

    def _api_token(self, token: str) -> Principal:
        token_id = _token_id(token)
        record = self._lookup_token(token_id) if token_id else None
        if record is None or not hmac.compare_digest(token_digest(token), record.sha256):
            raise NotAuthenticated("unknown or revoked API token", token_sent=True)
        return Principal(subject=f"token:{record.id}", role=Role(record.role), method="api-token")


# --- middleware and dependencies ----------------------------------------------------------------


class SignInMiddleware:
    """Authenticates every protected request before routing, body parsing or validation run,
    so a request without credentials is a 401 whatever else is wrong with it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Callable[[], Authenticator],
        protected: Callable[[str], bool],
    ) -> None:
        self.app = app
        self._authenticator = authenticator
        self._protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._protected(_route_path(scope)):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._authenticator().authenticate(
                Headers(scope=scope).get("authorization")
            )
        except ConfigApiError as exc:
            log.info(
                "sign-in refused",
                status=exc.status_code,
                reason=str(exc),
                path=scope.get("path"),
            )
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        with structlog.contextvars.bound_contextvars(principal=principal.subject):
            await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def protected_paths(*, metrics: bool) -> Callable[[str], bool]:
    def protected(path: str) -> bool:
        return path == "/api" or path.startswith("/api/") or (metrics and path == "/metrics")

    return protected


def principal_of(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # a route outside the protected paths asked for a role
        raise NotAuthenticated("sign in first")
    return principal


def require(role: Role) -> Any:
    """A route dependency: the caller's role must allow ``role``."""

    async def check(request: Request) -> Principal:
        principal = principal_of(request)
        if not principal.role.allows(role):
            raise Forbidden(
                f"signed in as {principal.subject!r} with role {principal.role.value!r}; this "
                f"needs role {role.value!r}"
            )
        return principal

    return Depends(check)


ViewerRequired = require(Role.VIEWER)
AdminRequired = require(Role.ADMIN)
