"""The server: one HTTPS listener on 127.0.0.1 serving both halves."""

from __future__ import annotations

import ssl
import threading
import time
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Self
from urllib.parse import unquote

import structlog

from devstack.graph.http import Handler
from devstack.graph.identity import IdentityPlatform
from devstack.graph.mail import ExchangeMail
from devstack.graph.model import (
    DEFAULT_PAGE_SIZE,
    AppRegistration,
    AuthCode,
    Grant,
    GraphError,
    Mailbox,
    SentMail,
    Upload,
)

if TYPE_CHECKING:
    from types import TracebackType

    from devstack.certs import TestPki

log = structlog.get_logger(__name__)


class LocalGraph(IdentityPlatform, ExchangeMail):
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
        self._mailboxes: dict[str, Mailbox] = {}
        self._groups: set[str] = set()
        self._access: dict[str, Grant] = {}
        self._refresh: dict[str, Grant] = {}
        self._codes: dict[str, AuthCode] = {}
        self._users: dict[str, frozenset[str]] = {}
        self._uploads: dict[str, Upload] = {}
        self._throttled: dict[str, list[tuple[int, float]]] = {}
        self._lost_answers: list[str] = []
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
        handler = type("_BoundHandler", (Handler,), {"graph": self})
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

    # --- both halves ---

    def authenticate(self, authorization: str | None, mailbox: str, permission: str) -> None:
        """Graph's gate for every mail request: a live access token (401), a mailbox that
        exists and is not a group (404), the token's user and permission (403), then any
        injected throttling (429/503 with Retry-After)."""
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
