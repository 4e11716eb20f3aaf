"""The stand-in's state: app registrations, mailboxes, grants, and the error it answers."""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading

GRAPH_RESOURCE = "https://graph.microsoft.com"
REQUEST_LIMIT_BYTES = 4 * 1024 * 1024
"""Graph's limit on one request body (sendMail, create message, one upload chunk)."""
ATTACHMENT_POST_LIMIT_BYTES = 3 * 1024 * 1024
DEFAULT_PAGE_SIZE = 10
WELL_KNOWN = ("inbox", "junkemail", "drafts", "sentitems", "deleteditems", "archive")
DISPLAY_NAMES = {
    "inbox": "Inbox",
    "junkemail": "Junk Email",
    "drafts": "Drafts",
    "sentitems": "Sent Items",
    "deleteditems": "Deleted Items",
    "archive": "Archive",
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_id(prefix: str = "AAMk") -> str:
    return prefix + b64url(secrets.token_bytes(24))


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
    public_client: bool = False
    """A browser app (Entra's "single-page application" platform): no client secret, PKCE
    required, and the token endpoint answers its redirect URIs' origins with CORS headers."""
    api_audience: str | None = None
    """The app exposes an API under this Application ID URI (e.g. ``api://email-channels``):
    a scope ``<api_audience>/<name>`` gets an access token for it (v2, signed, checked against
    the JWKS) carrying the signed-in user's app roles in ``roles``."""


@dataclass
class Folder:
    id: str
    name: str
    parent_id: str
    well_known: str | None = None


@dataclass
class StoredMessage:
    id: str
    folder_id: str
    mime: bytes
    is_read: bool = False
    is_draft: bool = False
    received_at: float = field(default_factory=time.time)
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)


@dataclass
class Mailbox:
    address: str
    root_id: str
    folders: dict[str, Folder] = field(default_factory=dict)
    messages: dict[str, StoredMessage] = field(default_factory=dict)
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
class Grant:
    client_id: str
    tenant_id: str
    user: str | None
    scopes: tuple[str, ...]
    expires_at: float
    permissions: frozenset[str]


@dataclass
class AuthCode:
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
class Upload:
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


def oauth_error(status: int, error: str, aadsts: int, text: str) -> GraphError:
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


class StandIn:
    """What the identity and mail halves of :class:`~devstack.graph.server.LocalGraph` share."""

    _lock: threading.RLock
    _seq: int

    @property
    def authority_host(self) -> str:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        raise NotImplementedError

    @property
    def graph_url(self) -> str:
        raise NotImplementedError
