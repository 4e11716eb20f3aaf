"""Microsoft Graph tokens through msal: app-only and delegated, with an encrypted token cache.

Two ways to a token (:class:`~email_channels.events.GraphAuth`):

- **app-only** — client credentials (tenant id, client id, client secret); msal keeps the
  access token in memory until it is about to expire;
- **delegated** — an administrator signed in once ("Save and authorise": authorisation code with
  PKCE, :meth:`GraphTokens.start_sign_in` / :meth:`GraphTokens.finish_sign_in`); msal's token
  cache, which holds the refresh token, is serialised and **encrypted with the secret box**
  before it is stored anywhere. When Microsoft rotates the refresh token the cache changes and
  :meth:`GraphTokens.rotated_cache` hands the new one to whoever persists it.

msal is synchronous (``requests``): every msal call runs in a worker thread so it never blocks
the event loop. Authority discovery (OIDC) is msal's own; for an authority host that is not
Microsoft's (the local stand-in of ``devstack.graph``) msal's instance discovery - which always
asks login.microsoftonline.com - is turned off and the CA file is trusted instead.

:func:`map_token_error` is the one place msal's error answers and exceptions become errors of the
shared taxonomy — an expired or revoked sign-in is ``ChannelMisconfigured(step="token")``, which
turns the channel Inactive until an administrator authorises again. Secrets and tokens are never
logged or put into an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

import msal
import requests
import structlog

from email_channels.errors import ChannelMisconfigured, PipelineError, TransientError
from email_channels.events import GraphAuth
from email_channels.secretbox import SecretDecryptError

if TYPE_CHECKING:
    from pathlib import Path

    from email_channels.events import GraphApp
    from email_channels.secretbox import EncryptedSecret, SecretBox

log = structlog.get_logger(__name__)

DEFAULT_AUTHORITY_HOST = "login.microsoftonline.com"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
APP_SCOPES = ("https://graph.microsoft.com/.default",)
"""App-only: every application permission the tenant admin granted (Mail.ReadWrite, Mail.Send)."""
DELEGATED_SCOPES = (
    "https://graph.microsoft.com/Mail.ReadWrite",
    "https://graph.microsoft.com/Mail.Send",
)
"""Delegated: read/move/mark mail and send as the signed-in user (msal adds offline_access)."""

_FIELDS = ("tenant_id", "client_id", "client_secret")

# AADSTS codes (https://learn.microsoft.com/entra/identity-platform/reference-error-codes)
_TENANT_CODES = frozenset({90002, 900023, 90013})
_CLIENT_ID_CODES = frozenset({700016, 900144})
_SECRET_CODES = frozenset({7000215, 7000222, 7000218})
_REDIRECT_CODES = frozenset({50011, 500112, 500113})
_EXPIRED_CODES = frozenset({70008, 700082, 50173, 700084, 50078, 50076, 65001, 54005, 70000})


class GraphTokenError(ChannelMisconfigured):
    """No token: which field or step is wrong, in words an administrator can act on.

    ``field`` names the setting at fault (``tenant_id``, ``client_id``, ``client_secret``,
    ``redirect_uri``) when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, step="token")
        self.field = field


def check_app_fields(tenant_id: str, client_id: str, client_secret: str | None = None) -> None:
    """Refuse a tenant id, client id or secret with a space or line break at either end.

    A stray space pasted with the value is the classic cause of Microsoft's "can not retrieve
    token"; this says which field instead. The secret's value is never put into the message.
    """
    for field, value in zip(_FIELDS, (tenant_id, client_id, client_secret), strict=True):
        if value is None:
            continue
        if not value.strip():
            raise GraphTokenError(f"{field} is empty", field=field)
        if value != value.strip():
            raise GraphTokenError(
                f"{field} starts or ends with a space or line break (pasted with it?); Microsoft "
                "cannot issue a token for it - enter it without them",
                field=field,
            )


def authority_url(app: GraphApp) -> str:
    return f"https://{app.authority_host or DEFAULT_AUTHORITY_HOST}/{app.tenant_id}"


def graph_url(app: GraphApp) -> str:
    return (app.graph_url or DEFAULT_GRAPH_URL).rstrip("/")


class GraphTokens:
    """Access tokens for one channel's app registration (one direction: inbound or outbound).

    ``token_cache`` overrides the app's stored cache (the fetcher passes a rotated cache it
    persisted itself). ``ca_file`` is trusted only for an authority that is not Microsoft's
    (a local stand-in); Microsoft's own host is verified against the system store.
    """

    def __init__(
        self,
        app: GraphApp,
        *,
        secrets: SecretBox | None,
        ca_file: Path | None = None,
        timeout_s: float = 30.0,
        token_cache: EncryptedSecret | None = None,
    ) -> None:
        self._app = app
        self._secrets = secrets
        self._ca_file = ca_file
        self._timeout_s = timeout_s
        self._stored_cache = token_cache if token_cache is not None else app.token_cache
        self._cache = msal.SerializableTokenCache()
        self._client: Any = None
        self._lock = asyncio.Lock()

    @property
    def delegated(self) -> bool:
        return self._app.auth is GraphAuth.DELEGATED

    async def access_token(self, *, force_refresh: bool = False) -> str:
        """A valid access token; ``force_refresh`` after Graph answered 401 to the current one."""
        async with self._lock:
            client = await self._msal()
            result = await asyncio.to_thread(self._acquire, client, force_refresh=force_refresh)
        if not result or "access_token" not in result:
            raise map_token_error(result or {"error": "no_account"}, delegated=self.delegated)
        token: str = result["access_token"]
        return token

    def close(self) -> None:
        """Release msal's HTTP connections; never raises."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.http_client.close()

    def rotated_cache(self) -> EncryptedSecret | None:
        """The encrypted token cache if msal changed it (a refresh rotated the refresh token),
        once; None when nothing changed or for app-only (nothing worth keeping)."""
        if not self.delegated or not self._cache.has_state_changed:
            return None
        self._cache.has_state_changed = False
        return self._box().encrypt(self._cache.serialize())

    async def start_sign_in(self, *, redirect_uri: str, state: str) -> dict[str, Any]:
        """Begin "Save and authorise": msal's auth-code flow (PKCE verifier, nonce, state).

        The returned flow holds the verifier: keep it encrypted until :meth:`finish_sign_in`.
        ``flow["auth_uri"]`` is the Microsoft sign-in URL for the administrator.
        """
        client = await self._msal()

        def start() -> dict[str, Any]:
            flow: dict[str, Any] = client.initiate_auth_code_flow(
                scopes=list(DELEGATED_SCOPES),
                redirect_uri=redirect_uri,
                state=state,
                response_mode="form_post",  # the code never shows in a URL
            )
            return flow

        return await asyncio.to_thread(start)

    async def finish_sign_in(
        self, flow: dict[str, Any], response: dict[str, str]
    ) -> tuple[EncryptedSecret, str | None]:
        """Redeem the code Microsoft redirected back with; returns (encrypted cache, username)."""
        client = await self._msal()

        def finish() -> dict[str, Any]:
            try:
                result: dict[str, Any] = client.acquire_token_by_auth_code_flow(
                    flow, response, scopes=list(DELEGATED_SCOPES)
                )
            except ValueError as exc:  # msal: state mismatch, or a response without code
                return {"error": "invalid_state", "error_description": str(exc)}
            return result

        result = await asyncio.to_thread(finish)
        if "access_token" not in result:
            raise map_token_error(result, delegated=True)
        claims = result.get("id_token_claims") or {}
        username = claims.get("preferred_username") or claims.get("upn")
        self._cache.has_state_changed = False
        return self._box().encrypt(self._cache.serialize()), username

    # --- msal ---

    async def _msal(self) -> Any:
        if self._client is None:
            self._client = await asyncio.to_thread(self._build)
        return self._client

    def _build(self) -> Any:
        app = self._app
        secret = self._decrypt(app.client_secret, "client_secret")
        check_app_fields(app.tenant_id, app.client_id, secret)
        if self.delegated and self._stored_cache is not None:
            self._cache.deserialize(self._decrypt(self._stored_cache, "token_cache"))
        local = app.authority_host not in {None, DEFAULT_AUTHORITY_HOST}
        http_client = None
        if local and self._ca_file is not None:
            # requests lets REQUESTS_CA_BUNDLE override a session's own ``verify``: opt out.
            http_client = requests.Session()
            http_client.trust_env = False
            http_client.verify = str(self._ca_file)
        try:
            return msal.ConfidentialClientApplication(
                app.client_id,
                client_credential=secret,
                authority=authority_url(app),
                token_cache=self._cache,
                http_client=http_client,
                timeout=self._timeout_s,
                # msal validates an authority with instance discovery at Microsoft's own host
                # (also when a refresh fails); a local stand-in is taken as given instead.
                validate_authority=not local,
                instance_discovery=False if local else None,
            )
        except Exception as exc:
            raise map_token_exception(exc) from exc

    def _acquire(self, client: Any, *, force_refresh: bool) -> dict[str, Any] | None:
        try:
            if not self.delegated:
                if force_refresh:
                    client.remove_tokens_for_client()
                result: dict[str, Any] | None = client.acquire_token_for_client(
                    scopes=list(APP_SCOPES)
                )
                return result
            accounts = client.get_accounts()
            if not accounts:
                return {"error": "no_account"}
            return client.acquire_token_silent_with_error(  # type: ignore[no-any-return]
                list(DELEGATED_SCOPES), account=accounts[0], force_refresh=force_refresh
            )
        except Exception as exc:
            raise map_token_exception(exc) from exc

    def _decrypt(self, secret: EncryptedSecret, field: str) -> str:
        try:
            return self._box().decrypt(secret)
        except SecretDecryptError as exc:
            raise GraphTokenError(f"{field} cannot be decrypted: {exc}", field=field) from exc

    def _box(self) -> SecretBox:
        if self._secrets is None:
            raise GraphTokenError(
                "the Graph secrets cannot be decrypted: this service has no "
                "EMAIL_CHANNELS_SECRET_KEYS"
            )
        return self._secrets


def map_token_error(result: dict[str, Any], *, delegated: bool) -> PipelineError:  # noqa: PLR0911 - a table
    """Translate msal's error answer (``{"error", "error_codes"}``) into the taxonomy."""
    error = str(result.get("error", ""))
    codes = set(result.get("error_codes") or [])
    description = str(result.get("error_description", "")).split("\r\n")[0].split("\n")[0]
    if error == "no_account":
        return GraphTokenError(
            "not authorised: no administrator has signed in for this channel yet (or the "
            "sign-in was cleared) - use Save and authorise"
        )
    if error == "invalid_state":
        return GraphTokenError(f"the sign-in answer does not match the sign-in started: {error}")
    if codes & _TENANT_CODES or error == "invalid_tenant":
        return GraphTokenError(f"tenant_id is not a known tenant: {description}", field="tenant_id")
    if codes & _CLIENT_ID_CODES:
        return GraphTokenError(
            f"client_id is not an application in this tenant: {description}", field="client_id"
        )
    if codes & _SECRET_CODES or error == "invalid_client":
        return GraphTokenError(
            f"client_secret was refused (wrong or expired): {description}", field="client_secret"
        )
    if codes & _REDIRECT_CODES:
        return GraphTokenError(
            f"redirect_uri is not registered for the app in Azure (or does not match): "
            f"{description}",
            field="redirect_uri",
        )
    if error in {"invalid_grant", "interaction_required", "consent_required"} or (
        codes & _EXPIRED_CODES
    ):
        what = "the administrator's sign-in" if delegated else "the app's grant"
        return GraphTokenError(
            f"{what} expired or was revoked ({error}): an administrator must authorise again "
            f"(Save and authorise): {description}"
        )
    if error in {"temporarily_unavailable", "server_error"}:
        return TransientError(f"the identity platform is unavailable: {error}: {description}")
    return GraphTokenError(f"no token: {error}: {description}")


def map_token_exception(exc: Exception) -> PipelineError:  # noqa: PLR0911 - a table
    """Translate what msal / requests raise (discovery failures, network) into the taxonomy."""
    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, requests.exceptions.SSLError):
        return ChannelMisconfigured(
            f"the identity platform's certificate is not trusted: {exc}", step="tls"
        )
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return TransientError(f"the identity platform cannot be reached: {type(exc).__name__}")
    if isinstance(exc, ValueError):  # msal: OIDC discovery refused (unknown tenant), bad authority
        text = str(exc)
        if "invalid_tenant" in text or "90002" in text or "OIDC Discovery failed" in text:
            return GraphTokenError(
                "tenant_id is not a known tenant (OIDC discovery refused it)", field="tenant_id"
            )
        return GraphTokenError(f"the identity platform refused the app's settings: {text[:200]}")
    if isinstance(exc, requests.exceptions.RequestException):
        return TransientError(f"the identity platform failed: {type(exc).__name__}")
    return TransientError(f"token request failed: {type(exc).__name__}: {exc}")


def flow_to_text(flow: dict[str, Any]) -> str:
    """msal's auth-code flow as text, for encryption (it holds the PKCE verifier)."""
    return json.dumps(flow, separators=(",", ":"), sort_keys=True)


def flow_from_text(text: str) -> dict[str, Any]:
    flow: dict[str, Any] = json.loads(text)
    return flow
