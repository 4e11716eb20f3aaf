"""The identity platform half: discovery, authorize, token (three grants), revocation, and
what a browser OIDC client needs besides (a sign-in form, JWKS, CORS, API access tokens)."""

from __future__ import annotations

import functools
import hashlib
import html
import json
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devstack.graph.model import (
    GRAPH_RESOURCE,
    AppRegistration,
    AuthCode,
    Grant,
    StandIn,
    b64url,
    new_id,
    oauth_error,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

SIGNING_KID = "local"


@functools.cache
def _signing_key() -> rsa.RSAPrivateKey:
    """The key every token is signed with (one per process; published at the JWKS URL)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64int(number: int) -> str:
    return b64url(number.to_bytes((number.bit_length() + 7) // 8, "big"))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _object_id(user: str) -> str:
    digest = hashlib.sha256(user.encode()).hexdigest()[:32]
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


class IdentityPlatform(StandIn):
    """Tenants, app registrations, authorisation codes, access and refresh tokens."""

    _apps: dict[str, AppRegistration]
    _tenants: set[str]
    _access: dict[str, Grant]
    _refresh: dict[str, Grant]
    _codes: dict[str, AuthCode]
    _users: dict[str, frozenset[str]]
    access_token_lifetime_s: int
    strict_rotation: bool

    def register_app(self, app: AppRegistration) -> AppRegistration:
        with self._lock:
            self._tenants.add(app.tenant_id)
            self._apps[app.client_id] = app
        return app

    def add_user(self, address: str, roles: Iterable[str] = ()) -> None:
        """A directory user who may sign in through the sign-in form, with the app roles
        assigned to them (``roles`` of the API access tokens and id tokens they get)."""
        with self._lock:
            self._users[address.casefold()] = frozenset(roles)

    def revoke(self, client_id: str) -> None:
        """An admin revokes the app's sessions: every token it holds stops working."""
        with self._lock:
            for tokens in (self._access, self._refresh):
                for key in [k for k, g in tokens.items() if g.client_id == client_id]:
                    del tokens[key]

    def expire_access_tokens(self) -> None:
        with self._lock:
            for grant in self._access.values():
                grant.expires_at = 0.0

    def refresh_tokens(self) -> int:
        with self._lock:
            return len(self._refresh)

    # --- tokens ---

    def _issue(self, grant: Grant, *, refresh: bool) -> dict[str, Any]:
        now = time.time()
        access = self._jwt(
            {
                "aud": GRAPH_RESOURCE,
                "iss": f"https://sts.windows.net/{grant.tenant_id}/",
                "iat": int(now),
                "nbf": int(now),
                "exp": int(now + self.access_token_lifetime_s),
                "appid": grant.client_id,
                "tid": grant.tenant_id,
                **(
                    {"scp": " ".join(sorted(grant.permissions)), "upn": grant.user}
                    if grant.user
                    else {"roles": sorted(grant.permissions)}
                ),
            }
        )
        grant.expires_at = now + self.access_token_lifetime_s
        self._access[access] = grant
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime_s,
            "ext_expires_in": self.access_token_lifetime_s,
            "access_token": access,
        }
        if refresh:
            rt = "0.AR" + b64url(secrets.token_bytes(48))
            self._refresh[rt] = Grant(
                grant.client_id,
                grant.tenant_id,
                grant.user,
                grant.scopes,
                now + 90 * 86400,
                grant.permissions,
            )
            answer["refresh_token"] = rt
            answer["scope"] = " ".join(grant.scopes)
        return answer

    def _jwt(self, claims: dict[str, Any]) -> str:
        """A JWT signed RS256 with the key published at the JWKS URL."""
        header = b64url(json.dumps({"typ": "JWT", "alg": "RS256", "kid": SIGNING_KID}).encode())
        body = b64url(json.dumps(claims).encode())
        signature = _signing_key().sign(
            f"{header}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{header}.{body}.{b64url(signature)}"

    def jwks(self) -> dict[str, Any]:
        """The public signing keys (``jwks_uri`` of the discovery document)."""
        numbers = _signing_key().public_key().public_numbers()
        key = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": SIGNING_KID}
        return {"keys": [{**key, "n": _b64int(numbers.n), "e": _b64int(numbers.e)}]}

    def cors_origin(self, origin: str | None) -> str | None:
        """``origin`` when a browser app (public client) registered a redirect URI there."""
        if not origin:
            return None
        with self._lock:
            allowed = {
                _origin(uri)
                for app in self._apps.values()
                if app.public_client
                for uri in app.redirect_uris
            }
        return origin if origin in allowed else None

    def _api_access_token(
        self, app: AppRegistration, api: AppRegistration, user: str, scopes: tuple[str, ...]
    ) -> dict[str, Any]:
        """A v2 access token for an API the tenant's app exposes, with the user's app roles."""
        assert api.api_audience is not None
        now = int(time.time())
        oid = _object_id(user)
        prefix = f"{api.api_audience}/"
        claims: dict[str, Any] = {
            "aud": api.api_audience,
            "iss": f"{self.base_url}/{app.tenant_id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + self.access_token_lifetime_s,
            "sub": oid,
            "oid": oid,
            "tid": app.tenant_id,
            "azp": app.client_id,
            "scp": " ".join(s.removeprefix(prefix) for s in scopes if s.startswith(prefix)),
            "preferred_username": user,
            "name": user.split("@", maxsplit=1)[0],
            "ver": "2.0",
        }
        roles = sorted(self._users.get(user.casefold(), frozenset()))
        if roles:
            claims["roles"] = roles
        return {
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime_s,
            "ext_expires_in": self.access_token_lifetime_s,
            "access_token": self._jwt(claims),
            "scope": " ".join(scopes),
        }

    def _api_for(self, scopes: tuple[str, ...]) -> AppRegistration | None:
        return next(
            (
                api
                for api in self._apps.values()
                if api.api_audience and any(s.startswith(f"{api.api_audience}/") for s in scopes)
            ),
            None,
        )

    def _id_token(self, app: AppRegistration, user: str, nonce: str | None) -> dict[str, Any]:
        oid = _object_id(user)
        now = int(time.time())
        claims = {
            "aud": app.client_id,
            "iss": f"{self.base_url}/{app.tenant_id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "sub": oid,
            "oid": oid,
            "tid": app.tenant_id,
            "preferred_username": user,
            "name": user.split("@", maxsplit=1)[0],
            "ver": "2.0",
        }
        if nonce:
            claims["nonce"] = nonce
        roles = sorted(self._users.get(user.casefold(), frozenset()))
        if roles:
            claims["roles"] = roles
        return {
            "id_token": self._jwt(claims),
            "client_info": b64url(json.dumps({"uid": oid, "utid": app.tenant_id}).encode()),
        }

    def _client(self, tenant: str, form: dict[str, str]) -> tuple[AppRegistration, bool]:
        """The app calling the token endpoint, and whether it is a public client (no secret)."""
        app = self._registered_app(tenant, form.get("client_id", ""))
        public = app.public_client and "client_secret" not in form
        if not public and not secrets.compare_digest(
            form.get("client_secret", "").encode(), app.client_secret.encode()
        ):
            raise oauth_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the "
                "request is the client secret value, not the client secret ID.",
            )
        return app, public

    def token(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self._check_tenant(tenant)
            app, public = self._client(tenant, form)
            grant_type = form.get("grant_type")
            scopes = tuple(form.get("scope", "").split())
            if grant_type == "client_credentials" and public:
                raise oauth_error(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' "
                    "or 'client_secret'.",
                )
            if grant_type == "client_credentials":
                if not scopes or not all(s.endswith("/.default") for s in scopes):
                    raise oauth_error(
                        400, "invalid_scope", 1002012, "The provided value for scope is not valid."
                    )
                grant = Grant(app.client_id, tenant, None, scopes, 0.0, app.permissions)
                return self._issue(grant, refresh=False)
            if grant_type == "authorization_code":
                return self._redeem(app, form, scopes)
            if grant_type == "refresh_token":
                old = form.get("refresh_token", "")
                previous = self._refresh.get(old)
                if previous is None or previous.client_id != app.client_id:
                    raise oauth_error(
                        400,
                        "invalid_grant",
                        50173,
                        "The provided grant has expired due to it being revoked, a fresh auth "
                        "token is needed.",
                    )
                if previous.expires_at < time.time():
                    raise oauth_error(
                        400, "invalid_grant", 700082, "The refresh token has expired."
                    )
                if self.strict_rotation:
                    del self._refresh[old]
                grant = Grant(
                    app.client_id,
                    tenant,
                    previous.user,
                    scopes or previous.scopes,
                    0.0,
                    previous.permissions,
                )
                answer = self._issue(grant, refresh=True)
                answer.update(self._id_token(app, previous.user or "", None))
                return answer
            raise oauth_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )

    def _redeem(
        self, app: AppRegistration, form: dict[str, str], scopes: tuple[str, ...]
    ) -> dict[str, Any]:
        code = self._codes.get(form.get("code", ""))
        if code is None or code.client_id != app.client_id:
            raise oauth_error(
                400, "invalid_grant", 70000, "The provided authorization code is invalid."
            )
        if code.used:
            raise oauth_error(
                400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed."
            )
        if code.expires_at < time.time():
            raise oauth_error(
                400, "invalid_grant", 70008, "The provided authorization code has expired."
            )
        if form.get("redirect_uri") != code.redirect_uri:
            raise oauth_error(
                400,
                "invalid_grant",
                500112,
                "The reply address does not match the reply address provided when requesting "
                "the authorization code.",
            )
        verifier = form.get("code_verifier", "")
        expected = b64url(hashlib.sha256(verifier.encode("ascii")).digest())
        if code.method != "S256" or not secrets.compare_digest(expected, code.challenge):
            raise oauth_error(
                400,
                "invalid_grant",
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the "
                "authorization request.",
            )
        code.used = True
        granted = tuple(s for s in (scopes or tuple(code.scope.split())))
        api = self._api_for(granted)
        if api is not None:  # a token for the tenant's own API, not for Graph
            answer = self._api_access_token(app, api, code.user, granted)
            answer.update(self._id_token(app, code.user, code.nonce))
            return answer
        grant = Grant(app.client_id, app.tenant_id, code.user, granted, 0.0, app.permissions)
        answer = self._issue(grant, refresh=True)
        answer.update(self._id_token(app, code.user, code.nonce))
        return answer

    def sign_in_page(self, tenant: str, query: dict[str, str], error: str = "") -> str | None:
        """The tiny sign-in form of a browser app without a preset user (None: no form, the
        preset user consents at once). It posts ``login`` back to the same URL."""
        with self._lock:
            app = self._authorizing_app(tenant, query)
            if app.user is not None or not app.public_client:
                return None
        message = f'<p role="alert" class="error">{html.escape(error)}</p>' if error else ""
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            "<title>Sign in to your account</title><style>"
            "body{font-family:sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}"
            "label,input,button{display:block;width:100%;margin:.5rem 0;font-size:1rem}"
            "input{padding:.4rem}button{padding:.5rem;background:#0067b8;color:#fff;border:0}"
            ".error{color:#a4262c}</style></head><body><main>"
            "<h1>Sign in</h1><p>Local identity stand-in (devstack)</p>"
            f'{message}<form method="post"><label for="login">Email or username</label>'
            '<input id="login" name="login" type="email" autocomplete="username" required>'
            '<button type="submit">Sign in</button></form></main></body></html>'
        )

    def has_user(self, address: str) -> bool:
        with self._lock:
            return address.casefold() in self._users

    def _authorizing_app(self, tenant: str, query: dict[str, str]) -> AppRegistration:
        self._check_tenant(tenant)
        return self._registered_app(tenant, query.get("client_id", ""))

    def _registered_app(self, tenant: str, client_id: str) -> AppRegistration:
        """The app ``client_id`` of ``tenant``, or Entra's AADSTS700016 answer."""
        app = self._apps.get(client_id)
        if app is None or app.tenant_id != tenant:
            raise oauth_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found "
                f"in the directory '{tenant}'.",
            )
        return app

    def authorize(
        self, tenant: str, query: dict[str, str], *, login: str | None = None
    ) -> tuple[str, dict[str, str]]:
        """Where the browser goes after the user signed in and consented, and with what.
        ``login``: who signed in through :meth:`sign_in_page` (a user of :meth:`add_user`)."""
        with self._lock:
            app = self._authorizing_app(tenant, query)
            redirect = query.get("redirect_uri", "")
            if redirect not in app.redirect_uris:
                raise oauth_error(
                    400,
                    "invalid_request",
                    50011,
                    f"The redirect URI '{redirect}' specified in the request does not match the "
                    f"redirect URIs configured for the application '{app.client_id}'.",
                )
            if query.get("response_type") != "code" or not query.get("code_challenge"):
                raise oauth_error(
                    400,
                    "invalid_request",
                    900144,
                    "The request must use response_type=code with PKCE.",
                )
            user = app.user
            if user is None and login is not None and login.casefold() in self._users:
                user = login
            if user is None:
                raise oauth_error(400, "access_denied", 65004, "User declined to consent.")
            value = "0.AR" + b64url(secrets.token_bytes(32))
            self._codes[value] = AuthCode(
                app.client_id,
                redirect,
                query["code_challenge"],
                query.get("code_challenge_method", "plain"),
                query.get("scope", ""),
                query.get("nonce"),
                user,
                time.time() + 600,
            )
            params = {"code": value, "state": query.get("state", ""), "session_state": new_id("")}
            return redirect, params

    def _check_tenant(self, tenant: str) -> None:
        if tenant not in self._tenants and tenant not in {"common", "organizations"}:
            raise oauth_error(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.",
            )

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        with self._lock:
            self._check_tenant(tenant)
        base = f"{self.base_url}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{self.base_url}/{tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.base_url}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "tid", "oid"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        }

    def instance_discovery(self, query: dict[str, str]) -> dict[str, Any]:
        endpoint = urlsplit(query.get("authorization_endpoint", ""))
        tenant = endpoint.path.strip("/").split("/")[0] or "common"
        return {
            "tenant_discovery_endpoint": (
                f"{self.base_url}/{tenant}/v2.0/.well-known/openid-configuration"
            ),
            "api-version": "1.1",
            "metadata": [
                {
                    "preferred_network": self.authority_host,
                    "preferred_cache": self.authority_host,
                    "aliases": [self.authority_host],
                }
            ],
        }
