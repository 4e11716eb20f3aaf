"""The identity platform half: discovery, authorize, token (three grants), revocation."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

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


class IdentityPlatform(StandIn):
    """Tenants, app registrations, authorisation codes, access and refresh tokens."""

    _apps: dict[str, AppRegistration]
    _tenants: set[str]
    _access: dict[str, Grant]
    _refresh: dict[str, Grant]
    _codes: dict[str, AuthCode]
    access_token_lifetime_s: int
    strict_rotation: bool

    def register_app(self, app: AppRegistration) -> AppRegistration:
        with self._lock:
            self._tenants.add(app.tenant_id)
            self._apps[app.client_id] = app
        return app

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
        header = b64url(json.dumps({"typ": "JWT", "alg": "RS256", "kid": "local"}).encode())
        body = b64url(json.dumps(claims).encode())
        return f"{header}.{body}.{b64url(secrets.token_bytes(32))}"

    def _id_token(self, app: AppRegistration, user: str, nonce: str | None) -> dict[str, Any]:
        oid = hashlib.sha256(user.encode()).hexdigest()[:32]
        oid = f"{oid[:8]}-{oid[8:12]}-{oid[12:16]}-{oid[16:20]}-{oid[20:]}"
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
        return {
            "id_token": self._jwt(claims),
            "client_info": b64url(json.dumps({"uid": oid, "utid": app.tenant_id}).encode()),
        }

    def token(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self._check_tenant(tenant)
            app = self._apps.get(form.get("client_id", ""))
            if app is None or app.tenant_id != tenant:
                raise oauth_error(
                    400,
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{form.get('client_id', '')}' was not found "
                    f"in the directory '{tenant}'.",
                )
            if not secrets.compare_digest(
                form.get("client_secret", "").encode(), app.client_secret.encode()
            ):
                raise oauth_error(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the "
                    "request is the client secret value, not the client secret ID.",
                )
            grant_type = form.get("grant_type")
            scopes = tuple(form.get("scope", "").split())
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
        grant = Grant(app.client_id, app.tenant_id, code.user, granted, 0.0, app.permissions)
        answer = self._issue(grant, refresh=True)
        answer.update(self._id_token(app, code.user, code.nonce))
        return answer

    def authorize(self, tenant: str, query: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Where the browser goes after the user signed in and consented, and with what."""
        with self._lock:
            self._check_tenant(tenant)
            app = self._apps.get(query.get("client_id", ""))
            if app is None or app.tenant_id != tenant:
                raise oauth_error(
                    400,
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{query.get('client_id', '')}' was not found "
                    f"in the directory '{tenant}'.",
                )
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
            if app.user is None:
                raise oauth_error(400, "access_denied", 65004, "User declined to consent.")
            value = "0.AR" + b64url(secrets.token_bytes(32))
            self._codes[value] = AuthCode(
                app.client_id,
                redirect,
                query["code_challenge"],
                query.get("code_challenge_method", "plain"),
                query.get("scope", ""),
                query.get("nonce"),
                app.user,
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
