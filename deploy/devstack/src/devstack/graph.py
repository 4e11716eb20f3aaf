"""A local HTTPS stand-in for the Microsoft identity platform and the Graph mail API.

Microsoft's services cannot be reached from here, so Exchange Online support is tested against
this server, with the **real msal** and our real httpx client talking to it over TLS (the
certificate comes from the devstack test CA). It follows Microsoft's documented request and
response shapes for the endpoints the product uses, and nothing more:

identity platform (``https://127.0.0.1:<port>/<tenant>/...``)
    instance discovery (``/common/discovery/instance``), OIDC discovery
    (``/<tenant>/v2.0/.well-known/openid-configuration``), ``/oauth2/v2.0/authorize`` (no UI:
    the registered user consents at once and is redirected with ``code`` and ``state``;
    an unregistered redirect URI gets Microsoft's AADSTS50011 page), ``/oauth2/v2.0/token``
    with the client_credentials, authorization_code (PKCE S256 checked) and refresh_token grants;
    refresh tokens rotate on every use (``strict_rotation`` also invalidates the old one);
    errors as ``{"error", "error_description": "AADSTSnnnn: ...", "error_codes"}``.

Graph (``https://127.0.0.1:<port>/v1.0/users/<mailbox>/...``)
    ``mailFolders`` (+ ``childFolders``, well-known names), ``messages/delta`` per folder with
    ``Prefer: odata.maxpagesize``, ``@odata.nextLink`` / ``@odata.deltaLink`` and ``@removed``,
    ``messages/{id}/$value`` (MIME), PATCH ``isRead``, ``move`` (new id, as Exchange does),
    DELETE (to Deleted Items), ``sendMail`` with base64 MIME (4 MB request limit), drafts from
    MIME, ``attachments`` (< 3 MB), ``createUploadSession`` + ranged PUT chunks (<= 4 MB, no
    bearer token), ``send``; 429/503 with ``Retry-After`` on demand (:meth:`LocalGraph.throttle`);
    401 for expired or revoked tokens, 403 without the permission, 404 ``ErrorInvalidUser`` for
    an unknown mailbox or a distribution group.

Not reproduced: JSON (non-MIME) sendMail bodies, change notifications (webhooks), $batch,
consent screens and multi-factor prompts, token signatures (tokens are opaque to clients),
conditional access, and Graph's eventual consistency (a change shows in the very next delta).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar, Self
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import structlog

if TYPE_CHECKING:
    from types import TracebackType

    from devstack.certs import TestPki

log = structlog.get_logger(__name__)

GRAPH_RESOURCE = "https://graph.microsoft.com"
REQUEST_LIMIT_BYTES = 4 * 1024 * 1024
"""Graph's limit on one request body (sendMail, create message, one upload chunk)."""
ATTACHMENT_POST_LIMIT_BYTES = 3 * 1024 * 1024
DEFAULT_PAGE_SIZE = 10
WELL_KNOWN = ("inbox", "junkemail", "drafts", "sentitems", "deleteditems", "archive")
_DISPLAY = {
    "inbox": "Inbox",
    "junkemail": "Junk Email",
    "drafts": "Drafts",
    "sentitems": "Sent Items",
    "deleteditems": "Deleted Items",
    "archive": "Archive",
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_id(prefix: str = "AAMk") -> str:
    return prefix + _b64url(secrets.token_bytes(24))


# --- state ----------------------------------------------------------------------------------------


@dataclass
class AppRegistration:
    """An app registration in a tenant, with what the tenant admin granted it."""

    tenant_id: str
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...] = ()
    user: str | None = None
    """Who signs in when the authorise endpoint is visited (delegated flow)."""
    permissions: frozenset[str] = frozenset({"Mail.ReadWrite", "Mail.Send"})


@dataclass
class _Folder:
    id: str
    name: str
    parent_id: str
    well_known: str | None = None


@dataclass
class _Message:
    id: str
    folder_id: str
    mime: bytes
    is_read: bool = False
    is_draft: bool = False
    received_at: float = field(default_factory=time.time)
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)


@dataclass
class _Mailbox:
    address: str
    root_id: str
    folders: dict[str, _Folder] = field(default_factory=dict)
    messages: dict[str, _Message] = field(default_factory=dict)
    changes: list[tuple[int, str, str]] = field(default_factory=list)
    """(sequence, folder id, message id): what delta reports after a sequence number."""
    sync_generation: int = 0
    """Delta and skip tokens of an older generation are forgotten (410 SyncStateNotFound)."""


@dataclass(frozen=True)
class SentMail:
    """A message the server sent, as Exchange would hand it on."""

    mailbox: str
    mime: bytes
    via: str
    """``sendMail`` or ``draft`` (created, attachments uploaded, then sent)."""
    attachments: tuple[tuple[str, str, bytes], ...] = ()

    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.mime, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Grant:
    client_id: str
    tenant_id: str
    user: str | None
    scopes: tuple[str, ...]
    expires_at: float
    permissions: frozenset[str]


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    method: str
    scope: str
    nonce: str | None
    user: str
    expires_at: float
    used: bool = False


@dataclass
class _Upload:
    mailbox: str
    message_id: str
    name: str
    content_type: str
    size: int
    data: bytearray = field(default_factory=bytearray)


class GraphError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        oauth: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.oauth = oauth

    def body(self) -> dict[str, Any]:
        if self.oauth is not None:
            return self.oauth
        return {"error": {"code": self.code, "message": self.message, "innerError": {}}}


def _oauth_error(status: int, error: str, aadsts: int, text: str) -> GraphError:
    return GraphError(
        status,
        error,
        text,
        oauth={
            "error": error,
            "error_description": f"AADSTS{aadsts}: {text}\r\nTrace ID: {secrets.token_hex(8)}",
            "error_codes": [aadsts],
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        },
    )


class LocalGraph:
    """The server and its state. Use as a context manager; thread-safe."""

    def __init__(
        self,
        pki: TestPki,
        *,
        access_token_lifetime_s: int = 3600,
        strict_rotation: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self._pki = pki
        self.access_token_lifetime_s = access_token_lifetime_s
        self.strict_rotation = strict_rotation
        self.page_size = page_size
        self._lock = threading.RLock()
        self._seq = 0
        self._apps: dict[str, AppRegistration] = {}
        self._tenants: set[str] = set()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._groups: set[str] = set()
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._codes: dict[str, _Code] = {}
        self._uploads: dict[str, _Upload] = {}
        self._throttled: dict[str, list[tuple[int, float]]] = {}
        self.sent: list[SentMail] = []
        self.requests: list[tuple[str, str]] = []
        """(method, path) of every request, in order (queries left out)."""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._pki.server_cert, self._pki.server_key)
        handler = type("_BoundHandler", (_Handler,), {"graph": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="local-graph", daemon=True
        )
        self._thread.start()
        log.info("local graph started", url=self.base_url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def authority_host(self) -> str:
        """What goes into a channel's ``authority_host`` (msal: ``https://<this>/<tenant>``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"https://{self.authority_host}"

    @property
    def graph_url(self) -> str:
        """What goes into a channel's ``graph_url``."""
        return f"{self.base_url}/v1.0"

    # --- arranging a scene ---

    def register_app(self, app: AppRegistration) -> AppRegistration:
        with self._lock:
            self._tenants.add(app.tenant_id)
            self._apps[app.client_id] = app
        return app

    def add_mailbox(self, address: str) -> None:
        with self._lock:
            root = _new_id("AQMkRoot")
            box = _Mailbox(address=address.casefold(), root_id=root)
            for name in WELL_KNOWN:
                folder = _Folder(_new_id("AQMk"), _DISPLAY[name], root, well_known=name)
                box.folders[folder.id] = folder
            self._mailboxes[box.address] = box

    def add_group(self, address: str) -> None:
        """A distribution group: has an address, but no mailbox Graph can open."""
        with self._lock:
            self._groups.add(address.casefold())

    def add_folder(self, address: str, name: str, *, parent: str = "inbox") -> str:
        with self._lock:
            box = self._box(address)
            folder = _Folder(_new_id("AQMk"), name, self._folder(box, parent).id)
            box.folders[folder.id] = folder
            return folder.id

    def folder_id(self, address: str, name: str) -> str:
        with self._lock:
            return self._folder(self._box(address), name).id

    def deliver(self, address: str, mime: bytes, *, folder: str = "inbox") -> str:
        """Put a message into a folder (well-known name, display name or id); its Graph id."""
        with self._lock:
            box = self._box(address)
            target = self._folder(box, folder)
            message = _Message(_new_id(), target.id, mime)
            box.messages[message.id] = message
            self._changed(box, target.id, message.id)
            return message.id

    def remove(self, address: str, message_id: str) -> None:
        """Another client deletes a message for good."""
        with self._lock:
            box = self._box(address)
            message = box.messages.pop(message_id)
            self._changed(box, message.folder_id, message_id)

    def messages(self, address: str, folder: str = "inbox") -> list[tuple[str, bool]]:
        """(id, isRead) of the messages in a folder, oldest first."""
        with self._lock:
            box = self._box(address)
            target = self._folder(box, folder)
            return [(m.id, m.is_read) for m in box.messages.values() if m.folder_id == target.id]

    def forget_sync_state(self, address: str) -> None:
        """Graph forgot the mailbox's delta tokens (expired): the next use answers 410."""
        with self._lock:
            self._box(address).sync_generation += 1

    def throttle(
        self, address: str, *, times: int = 1, retry_after_s: float = 1.0, status: int = 429
    ) -> None:
        """The next ``times`` Graph requests for this mailbox are refused with Retry-After."""
        with self._lock:
            self._throttled.setdefault(address.casefold(), []).extend(
                [(status, retry_after_s)] * times
            )

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

    def graph_requests(self, fragment: str) -> list[tuple[str, str]]:
        with self._lock:
            return [r for r in self.requests if fragment in r[1]]

    # --- internals (lock held) ---

    def _changed(self, box: _Mailbox, folder_id: str, message_id: str) -> None:
        self._seq += 1
        box.changes.append((self._seq, folder_id, message_id))

    def _box(self, address: str) -> _Mailbox:
        box = self._mailboxes.get(unquote(address).casefold())
        if box is None:
            raise GraphError(
                404, "ErrorInvalidUser", f"The requested user '{unquote(address)}' is invalid."
            )
        return box

    def _folder(self, box: _Mailbox, ref: str) -> _Folder:
        ref = unquote(ref)
        if ref.casefold() == "msgfolderroot":
            return _Folder(box.root_id, "Top of Information Store", "")
        for folder in box.folders.values():
            if ref in {folder.id, folder.well_known} or folder.name.casefold() == ref.casefold():
                return folder
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )

    def _message(self, box: _Mailbox, message_id: str) -> _Message:
        message = box.messages.get(unquote(message_id))
        if message is None:
            raise GraphError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        return message

    # --- tokens ---

    def _issue(self, grant: _Grant, *, refresh: bool) -> dict[str, Any]:
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
            rt = "0.AR" + _b64url(secrets.token_bytes(48))
            self._refresh[rt] = _Grant(
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
        header = _b64url(json.dumps({"typ": "JWT", "alg": "RS256", "kid": "local"}).encode())
        body = _b64url(json.dumps(claims).encode())
        return f"{header}.{body}.{_b64url(secrets.token_bytes(32))}"

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
            "client_info": _b64url(json.dumps({"uid": oid, "utid": app.tenant_id}).encode()),
        }

    def token(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self._check_tenant(tenant)
            app = self._apps.get(form.get("client_id", ""))
            if app is None or app.tenant_id != tenant:
                raise _oauth_error(
                    400,
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{form.get('client_id', '')}' was not found "
                    f"in the directory '{tenant}'.",
                )
            if not secrets.compare_digest(
                form.get("client_secret", "").encode(), app.client_secret.encode()
            ):
                raise _oauth_error(
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
                    raise _oauth_error(
                        400, "invalid_scope", 1002012, "The provided value for scope is not valid."
                    )
                grant = _Grant(app.client_id, tenant, None, scopes, 0.0, app.permissions)
                return self._issue(grant, refresh=False)
            if grant_type == "authorization_code":
                return self._redeem(app, form, scopes)
            if grant_type == "refresh_token":
                old = form.get("refresh_token", "")
                previous = self._refresh.get(old)
                if previous is None or previous.client_id != app.client_id:
                    raise _oauth_error(
                        400,
                        "invalid_grant",
                        50173,
                        "The provided grant has expired due to it being revoked, a fresh auth "
                        "token is needed.",
                    )
                if previous.expires_at < time.time():
                    raise _oauth_error(
                        400, "invalid_grant", 700082, "The refresh token has expired."
                    )
                if self.strict_rotation:
                    del self._refresh[old]
                grant = _Grant(
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
            raise _oauth_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )

    def _redeem(
        self, app: AppRegistration, form: dict[str, str], scopes: tuple[str, ...]
    ) -> dict[str, Any]:
        code = self._codes.get(form.get("code", ""))
        if code is None or code.client_id != app.client_id:
            raise _oauth_error(
                400, "invalid_grant", 70000, "The provided authorization code is invalid."
            )
        if code.used:
            raise _oauth_error(
                400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed."
            )
        if code.expires_at < time.time():
            raise _oauth_error(
                400, "invalid_grant", 70008, "The provided authorization code has expired."
            )
        if form.get("redirect_uri") != code.redirect_uri:
            raise _oauth_error(
                400,
                "invalid_grant",
                500112,
                "The reply address does not match the reply address provided when requesting "
                "the authorization code.",
            )
        verifier = form.get("code_verifier", "")
        expected = _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
        if code.method != "S256" or not secrets.compare_digest(expected, code.challenge):
            raise _oauth_error(
                400,
                "invalid_grant",
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the "
                "authorization request.",
            )
        code.used = True
        granted = tuple(s for s in (scopes or tuple(code.scope.split())))
        grant = _Grant(app.client_id, app.tenant_id, code.user, granted, 0.0, app.permissions)
        answer = self._issue(grant, refresh=True)
        answer.update(self._id_token(app, code.user, code.nonce))
        return answer

    def authorize(self, tenant: str, query: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Where the browser goes after the user signed in and consented, and with what."""
        with self._lock:
            self._check_tenant(tenant)
            app = self._apps.get(query.get("client_id", ""))
            if app is None or app.tenant_id != tenant:
                raise _oauth_error(
                    400,
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{query.get('client_id', '')}' was not found "
                    f"in the directory '{tenant}'.",
                )
            redirect = query.get("redirect_uri", "")
            if redirect not in app.redirect_uris:
                raise _oauth_error(
                    400,
                    "invalid_request",
                    50011,
                    f"The redirect URI '{redirect}' specified in the request does not match the "
                    f"redirect URIs configured for the application '{app.client_id}'.",
                )
            if query.get("response_type") != "code" or not query.get("code_challenge"):
                raise _oauth_error(
                    400,
                    "invalid_request",
                    900144,
                    "The request must use response_type=code with PKCE.",
                )
            if app.user is None:
                raise _oauth_error(400, "access_denied", 65004, "User declined to consent.")
            value = "0.AR" + _b64url(secrets.token_bytes(32))
            self._codes[value] = _Code(
                app.client_id,
                redirect,
                query["code_challenge"],
                query.get("code_challenge_method", "plain"),
                query.get("scope", ""),
                query.get("nonce"),
                app.user,
                time.time() + 600,
            )
            params = {"code": value, "state": query.get("state", ""), "session_state": _new_id("")}
            return redirect, params

    def _check_tenant(self, tenant: str) -> None:
        if tenant not in self._tenants and tenant not in {"common", "organizations"}:
            raise _oauth_error(
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

    # --- Graph ---

    def authenticate(self, authorization: str | None, mailbox: str, permission: str) -> None:
        with self._lock:
            token = (authorization or "").removeprefix("Bearer ").strip()
            grant = self._access.get(token)
            if grant is None or grant.expires_at < time.time():
                raise GraphError(
                    401,
                    "InvalidAuthenticationToken",
                    "Lifetime validation failed, the token is expired."
                    if grant
                    else "Access token validation failure. Invalid audience or token.",
                )
            address = unquote(mailbox).casefold()
            if address in self._groups or address not in self._mailboxes:
                raise GraphError(
                    404, "ErrorInvalidUser", f"The requested user '{address}' is invalid."
                )
            if grant.user is not None and grant.user.casefold() != address:
                raise GraphError(
                    403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
                )
            if permission not in grant.permissions:
                raise GraphError(
                    403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
                )
            queue = self._throttled.get(address)
            if queue:
                status, retry_after = queue.pop(0)
                raise GraphError(
                    status,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    headers={"Retry-After": f"{retry_after:g}"},
                )

    def user(self, address: str) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            return {
                "id": hashlib.sha256(box.address.encode()).hexdigest()[:32],
                "mail": box.address,
                "userPrincipalName": box.address,
                "displayName": box.address.split("@")[0],
            }

    def folders(self, address: str, parent: str | None) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            parent_id = box.root_id if parent is None else self._folder(box, parent).id
            return {
                "value": [
                    self._folder_json(box, f)
                    for f in box.folders.values()
                    if f.parent_id == parent_id
                ]
            }

    def folder(self, address: str, ref: str) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            return self._folder_json(box, self._folder(box, ref))

    def _folder_json(self, box: _Mailbox, folder: _Folder) -> dict[str, Any]:
        inside = [m for m in box.messages.values() if m.folder_id == folder.id]
        return {
            "id": folder.id,
            "displayName": folder.name,
            "parentFolderId": folder.parent_id,
            "childFolderCount": sum(1 for f in box.folders.values() if f.parent_id == folder.id),
            "unreadItemCount": sum(1 for m in inside if not m.is_read),
            "totalItemCount": len(inside),
            "isHidden": False,
        }

    def delta(
        self, address: str, folder_ref: str, query: dict[str, str], page_size: int | None
    ) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            if "$skiptoken" in query:
                state = json.loads(_unb64url(query["$skiptoken"]))
            else:
                folder_id = self._folder(box, folder_ref).id
                since = None
                generation = box.sync_generation
                if "$deltatoken" in query:
                    token = json.loads(_unb64url(query["$deltatoken"]))
                    folder_id, since, generation = token["f"], token["s"], token.get("g", 0)
                state = {"f": folder_id, "from": since, "to": self._seq, "o": 0, "g": generation}
            if state.get("g", 0) != box.sync_generation:
                raise GraphError(
                    410,
                    "SyncStateNotFound",
                    "The sync state generation is not found. Please perform a full sync.",
                )
            items = self._delta_items(box, state)
            size = page_size or self.page_size
            offset = int(state["o"])
            page = items[offset : offset + size]
            base = (
                f"{self.graph_url}/users/{quote(box.address, safe='@')}/mailFolders/"
                f"{state['f']}/messages/delta"
            )
            answer: dict[str, Any] = {
                "@odata.context": f"{self.graph_url}/$metadata#Collection(message)",
                "value": page,
            }
            if offset + size < len(items):
                token = _b64url(json.dumps({**state, "o": offset + size}).encode())
                answer["@odata.nextLink"] = f"{base}?$skiptoken={token}"
            else:
                token = _b64url(
                    json.dumps({"f": state["f"], "s": state["to"], "g": state["g"]}).encode()
                )
                answer["@odata.deltaLink"] = f"{base}?$deltatoken={token}"
            return answer

    def _delta_items(self, box: _Mailbox, state: dict[str, Any]) -> list[dict[str, Any]]:
        folder_id, since, until = state["f"], state["from"], state["to"]
        if since is None:
            changed = [m for m in box.messages.values() if m.folder_id == folder_id]
            return [self._message_json(m) for m in changed]
        latest = {  # later changes of a message overwrite earlier ones: one item each
            message_id: seq
            for seq, changed_folder, message_id in box.changes
            if since < seq <= until and changed_folder == folder_id
        }
        items: list[dict[str, Any]] = []
        for message_id in sorted(latest, key=latest.__getitem__):
            message = box.messages.get(message_id)
            if message is None or message.folder_id != folder_id:
                items.append(
                    {
                        "@odata.type": "#microsoft.graph.message",
                        "id": message_id,
                        "@removed": {"reason": "deleted"},
                    }
                )
            else:
                items.append(self._message_json(message))
        return items

    def _message_json(self, message: _Message) -> dict[str, Any]:
        headers = message_from_bytes(message.mime, policy=policy.compat32)

        def recipients(name: str) -> list[dict[str, Any]]:
            return [
                {"emailAddress": {"name": n, "address": a}}
                for n, a in getaddresses([str(v) for v in headers.get_all(name, [])])
                if a
            ]

        return {
            "@odata.type": "#microsoft.graph.message",
            "@odata.etag": f'W/"{_b64url(hashlib.sha256(message.mime).digest()[:12])}"',
            "id": message.id,
            "receivedDateTime": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(message.received_at)
            ),
            "subject": str(headers.get("Subject", "")),
            "internetMessageId": str(headers.get("Message-ID", "")),
            "isRead": message.is_read,
            "isDraft": message.is_draft,
            "parentFolderId": message.folder_id,
            "toRecipients": recipients("To"),
            "ccRecipients": recipients("Cc"),
            "bccRecipients": recipients("Bcc"),
        }

    def mime(self, address: str, message_id: str) -> bytes:
        with self._lock:
            return self._message(self._box(address), message_id).mime

    def patch(self, address: str, message_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            message = self._message(box, message_id)
            if "isRead" in body:
                message.is_read = bool(body["isRead"])
                self._changed(box, message.folder_id, message.id)
            return self._message_json(message)

    def move(self, address: str, message_id: str, destination: str) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            message = self._message(box, message_id)
            target = self._folder(box, destination)
            del box.messages[message.id]
            self._changed(box, message.folder_id, message.id)
            moved = _Message(_new_id(), target.id, message.mime, message.is_read)
            box.messages[moved.id] = moved
            self._changed(box, target.id, moved.id)
            return self._message_json(moved)

    def delete(self, address: str, message_id: str) -> None:
        self.move(address, message_id, "deleteditems")

    def send_mail(self, address: str, mime: bytes) -> None:
        with self._lock:
            box = self._box(address)
            self.sent.append(SentMail(box.address, mime, "sendMail"))
            self._store_sent(box, mime)

    def _store_sent(self, box: _Mailbox, mime: bytes) -> None:
        sent = _Message(_new_id(), self._folder(box, "sentitems").id, mime, is_read=True)
        box.messages[sent.id] = sent
        self._changed(box, sent.folder_id, sent.id)

    def create_draft(self, address: str, mime: bytes) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            draft = _Message(_new_id(), self._folder(box, "drafts").id, mime, is_draft=True)
            box.messages[draft.id] = draft
            return self._message_json(draft)

    def add_attachment(self, address: str, message_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            message = self._message(self._box(address), message_id)
            content = base64.b64decode(body.get("contentBytes", ""))
            if len(content) > ATTACHMENT_POST_LIMIT_BYTES:
                raise GraphError(
                    413,
                    "ErrorRequestEntityTooLarge",
                    "Attachments over 3 MB need an upload session.",
                )
            message.attachments.append(
                (str(body.get("name", "")), str(body.get("contentType", "")), content)
            )
            return {"id": _new_id("AAMkAtt"), "name": body.get("name"), "size": len(content)}

    def create_upload(self, address: str, message_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            box = self._box(address)
            self._message(box, message_id)
            item = body.get("AttachmentItem") or {}
            if item.get("attachmentType") != "file" or not item.get("name") or not item.get("size"):
                raise GraphError(
                    400,
                    "ErrorInvalidRequest",
                    "AttachmentItem needs attachmentType file, name and size.",
                )
            session = _b64url(secrets.token_bytes(24))
            self._uploads[session] = _Upload(
                box.address,
                unquote(message_id),
                str(item["name"]),
                str(item.get("contentType", "application/octet-stream")),
                int(item["size"]),
            )
            return {
                "@odata.context": f"{self.graph_url}/$metadata#microsoft.graph.uploadSession",
                "uploadUrl": (
                    f"{self.base_url}/upload/{session}?authtoken={_b64url(secrets.token_bytes(16))}"
                ),
                "expirationDateTime": time.strftime(
                    "%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime(time.time() + 900)
                ),
                "nextExpectedRanges": ["0-"],
            }

    def upload(
        self, session: str, content_range: str, chunk: bytes, *, authorised: bool
    ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        with self._lock:
            upload = self._uploads.get(session)
            if upload is None:
                raise GraphError(
                    404, "ErrorItemNotFound", "The upload session was not found or expired."
                )
            if authorised:
                raise GraphError(
                    401,
                    "InvalidAuthenticationToken",
                    "Do not send an Authorization header with the upload URL.",
                )
            match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range.strip())
            if match is None:
                raise GraphError(400, "InvalidRange", "Content-Range is missing or malformed.")
            start, end, total = (int(g) for g in match.groups())
            if start != len(upload.data) or end - start + 1 != len(chunk) or total != upload.size:
                raise GraphError(
                    416, "InvalidRange", f"Expected range starting at {len(upload.data)}."
                )
            if len(chunk) > REQUEST_LIMIT_BYTES:
                raise GraphError(413, "ErrorRequestEntityTooLarge", "A chunk may be at most 4 MB.")
            upload.data.extend(chunk)
            if len(upload.data) < upload.size:
                return (
                    200,
                    {
                        "expirationDateTime": time.strftime(
                            "%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime(time.time() + 900)
                        ),
                        "nextExpectedRanges": [f"{len(upload.data)}-"],
                    },
                    {},
                )
            del self._uploads[session]
            box = self._box(upload.mailbox)
            message = self._message(box, upload.message_id)
            message.attachments.append((upload.name, upload.content_type, bytes(upload.data)))
            location = (
                f"{self.graph_url}/users('{box.address}')/messages('{message.id}')/"
                f"attachments('{_new_id('AAMkAtt')}')"
            )
            return 201, None, {"Location": location}

    def send_draft(self, address: str, message_id: str) -> None:
        with self._lock:
            box = self._box(address)
            draft = self._message(box, message_id)
            parsed = message_from_bytes(draft.mime, policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            for name, content_type, data in draft.attachments:
                maintype, _, subtype = content_type.partition("/")
                parsed.add_attachment(
                    data,
                    maintype=maintype or "application",
                    subtype=subtype or "octet-stream",
                    filename=name,
                )
            mime = parsed.as_bytes(policy=policy.SMTP)
            del box.messages[draft.id]
            self.sent.append(SentMail(box.address, mime, "draft", tuple(draft.attachments)))
            self._store_sent(box, mime)


# --- HTTP ---------------------------------------------------------------------------------------


def form_post_page(action: str, fields: dict[str, str]) -> str:
    """Microsoft's ``response_mode=form_post`` answer: a page that posts the fields onward."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}" />'
        for k, v in fields.items()
    )
    return (
        "<html><head><title>Working...</title></head><body>"
        f'<form method="POST" name="hiddenform" action="{html.escape(action)}">{inputs}'
        "<noscript><p>Script is disabled. Click Submit to continue.</p>"
        '<input type="submit" value="Submit" /></noscript></form>'
        "<script>document.forms[0].submit();</script></body></html>"
    )


def read_form_post(page: str) -> tuple[str, dict[str, str]]:
    """What a browser would post from a :func:`form_post_page`: (action URL, fields)."""
    action = re.search(r'<form[^>]*action="([^"]*)"', page)
    if action is None:
        raise ValueError("no form in the page")
    fields = dict(re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)"', page))
    return html.unescape(action[1]), {html.unescape(k): html.unescape(v) for k, v in fields.items()}


_USER = r"/v1\.0/users/(?P<user>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), name)
    for m, p, name in [
        ("GET", r"/common/discovery/instance", "instance"),
        ("GET", r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration", "openid"),
        ("GET", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/authorize", "authorize"),
        ("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", "token"),
        ("PUT", r"/upload/(?P<session>[^/]+)", "upload"),
        ("GET", _USER, "user"),
        ("GET", _USER + r"/mailFolders", "folders"),
        ("GET", _USER + r"/mailFolders/(?P<folder>[^/]+)/childFolders", "children"),
        ("GET", _USER + r"/mailFolders/(?P<folder>[^/]+)/messages/delta", "delta"),
        ("GET", _USER + r"/mailFolders/(?P<folder>[^/]+)", "folder"),
        ("GET", _USER + r"/messages/(?P<id>[^/]+)/\$value", "value"),
        ("PATCH", _USER + r"/messages/(?P<id>[^/]+)", "patch"),
        ("DELETE", _USER + r"/messages/(?P<id>[^/]+)", "delete"),
        ("POST", _USER + r"/messages/(?P<id>[^/]+)/move", "move"),
        ("POST", _USER + r"/messages/(?P<id>[^/]+)/send", "send"),
        (
            "POST",
            _USER + r"/messages/(?P<id>[^/]+)/attachments/createUploadSession",
            "create_upload",
        ),
        ("POST", _USER + r"/messages/(?P<id>[^/]+)/attachments", "attach"),
        ("POST", _USER + r"/messages", "create"),
        ("POST", _USER + r"/sendMail", "send_mail"),
    ]
]
_PERMISSION = {"send_mail": "Mail.Send", "send": "Mail.Send"}


class _Handler(BaseHTTPRequestHandler):
    graph: ClassVar[LocalGraph]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Quiet: the request list on :class:`LocalGraph` is the log."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.graph._lock:  # noqa: SLF001 - the handler is part of the server
            self.graph.requests.append((method, url.path))
        route = next(
            (
                (name, match.groupdict())
                for route_method, pattern, name in _ROUTES
                if route_method == method and (match := pattern.fullmatch(url.path))
            ),
            None,
        )
        try:
            if route is None:
                self._route("unknown", {"path": url.path}, query, body)
            else:
                self._route(route[0], route[1], query, body)
        except GraphError as exc:
            if exc.oauth is not None and url.path.endswith("/authorize"):
                self._send(exc.status, exc.oauth["error_description"].encode(), "text/html")
                return
            self._json(exc.status, exc.body(), headers=exc.headers)

    def _route(  # noqa: C901, PLR0912, PLR0915 - one table of endpoints
        self, name: str, args: dict[str, str], query: dict[str, str], body: bytes
    ) -> None:
        graph = self.graph
        if name == "unknown":
            raise GraphError(
                400, "BadRequest", f"Resource not found for the segment '{args['path']}'."
            )
        if name == "instance":
            self._json(200, graph.instance_discovery(query))
            return
        if name == "openid":
            self._json(200, graph.openid_configuration(args["tenant"]))
            return
        if name == "authorize":
            redirect, params = graph.authorize(args["tenant"], query)
            if query.get("response_mode") == "form_post":  # the browser posts the answer
                self._send(200, form_post_page(redirect, params).encode(), "text/html")
            else:
                location = f"{redirect}{'&' if '?' in redirect else '?'}{urlencode(params)}"
                self._send(302, b"", "text/html", headers={"Location": location})
            return
        if name == "token":
            form = {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
            self._json(200, graph.token(args["tenant"], form))
            return
        if name == "upload":
            status, answer, headers = graph.upload(
                args["session"],
                self.headers.get("Content-Range", ""),
                body,
                authorised="Authorization" in self.headers,
            )
            if answer is None:
                self._send(status, b"", "application/json", headers=headers)
            else:
                self._json(status, answer, headers=headers)
            return
        user = args["user"]
        graph.authenticate(
            self.headers.get("Authorization"), user, _PERMISSION.get(name, "Mail.ReadWrite")
        )
        if name in {"send_mail", "create"} and len(body) > REQUEST_LIMIT_BYTES:
            raise GraphError(
                413, "ErrorRequestEntityTooLarge", "The request exceeds the 4 MB limit."
            )
        if name == "user":
            self._json(200, graph.user(user))
        elif name == "folders":
            self._json(200, graph.folders(user, None))
        elif name == "children":
            self._json(200, graph.folders(user, args["folder"]))
        elif name == "folder":
            self._json(200, graph.folder(user, args["folder"]))
        elif name == "delta":
            prefer = re.search(r"odata\.maxpagesize=(\d+)", self.headers.get("Prefer", ""))
            self._json(
                200, graph.delta(user, args["folder"], query, int(prefer[1]) if prefer else None)
            )
        elif name == "value":
            self._send(200, graph.mime(user, args["id"]), "text/plain")
        elif name == "patch":
            self._json(200, graph.patch(user, args["id"], json.loads(body or b"{}")))
        elif name == "delete":
            graph.delete(user, args["id"])
            self._send(204, b"", "application/json")
        elif name == "move":
            destination = str(json.loads(body or b"{}").get("destinationId", ""))
            self._json(201, graph.move(user, args["id"], destination))
        elif name == "send":
            graph.send_draft(user, args["id"])
            self._send(202, b"", "application/json")
        elif name == "create_upload":
            self._json(201, graph.create_upload(user, args["id"], json.loads(body or b"{}")))
        elif name == "attach":
            self._json(201, graph.add_attachment(user, args["id"], json.loads(body or b"{}")))
        elif name in {"send_mail", "create"}:
            mime = self._mime_body(body)
            if name == "send_mail":
                graph.send_mail(user, mime)
                self._send(202, b"", "application/json")
            else:
                self._json(201, graph.create_draft(user, mime))

    def _mime_body(self, body: bytes) -> bytes:
        if not self.headers.get("Content-Type", "").startswith("text/plain"):
            raise GraphError(
                400,
                "ErrorInvalidRequest",
                "This local stand-in accepts only MIME (Content-Type: text/plain, base64).",
            )
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            raise GraphError(
                400,
                "ErrorMimeContentInvalidBase64String",
                "Invalid base64 string for MIME content.",
            ) from None

    def _json(self, status: int, body: Any, *, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers=headers)

    def _send(
        self, status: int, body: bytes, content_type: str, *, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", _new_id(""))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(body)
