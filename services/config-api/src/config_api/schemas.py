"""The HTTP API's request and response bodies — distinct from the Kafka event models.

Requests take secrets in plain text (``SecretStr``, write-only); responses never carry a
secret, only whether one is set (``password_set``). Text a human typed is trimmed (names,
hosts, user names, folders); a secret is never trimmed — a stray space is refused with an error
naming the field, because a silently altered password fails much later and far away.

Request models forbid unknown fields, so a typo (``pasword``) is a 422 naming it instead of a
silently ignored setting.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    StringConstraints,
    Tag,
)

from email_channels.events import (
    AfterFetch,
    ChannelState,
    EmailAddress,
    GraphAuth,
    Id,
    TlsMode,
)

if TYPE_CHECKING:
    from collections.abc import Callable

# --- field types --------------------------------------------------------------------------------


def _blank_to_none(value: Any) -> Any:
    """An empty or all-blank optional text field (as HTML forms send it) means "not set"."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _single_line(value: str) -> str:
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("must not contain control characters (line breaks, tabs, NUL)")
    return value


_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?$")


def _host(value: str) -> str:
    """A DNS name or an IP literal; not resolved here (the host policy applies at connect time)."""
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        if not _HOST_NAME.match(value):
            raise ValueError(
                "not a host name or IP address (expected e.g. imap.example.com, without "
                "scheme, port or path)"
            ) from None
        return value.lower()
    return value.strip("[]")


def _clean_secret(value: SecretStr) -> SecretStr:
    """Refuse, never trim: the error names the field and never shows the value."""
    plain = value.get_secret_value()
    if plain != plain.strip():
        raise ValueError(
            "must not start or end with a space or line break (a stray space from copy and "
            "paste?); enter it without them"
        )
    if any(char in plain for char in "\r\n\0"):
        raise ValueError("must not contain line breaks or NUL characters")
    return value


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_single_line),
]
HostName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=253),
    AfterValidator(_host),
]
Port = Annotated[int, Field(ge=1, le=65535)]
UserName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=320),
    AfterValidator(_single_line),
]
Password = Annotated[
    SecretStr,
    Field(min_length=1, max_length=1024),
    AfterValidator(_clean_secret),
]
FolderName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
    AfterValidator(_single_line),
]
OptionalEmail = Annotated[EmailAddress | None, BeforeValidator(_blank_to_none)]
OptionalId = Annotated[Id | None, BeforeValidator(_blank_to_none)]
OptionalUserName = Annotated[UserName | None, BeforeValidator(_blank_to_none)]
OptionalFolder = Annotated[FolderName | None, BeforeValidator(_blank_to_none)]


class RequestModel(BaseModel):
    """Base of request bodies: unknown fields refused, input never echoed in errors."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class ResponseModel(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- campaigns ----------------------------------------------------------------------------------


class CampaignIn(RequestModel):
    name: Name
    id: OptionalId = Field(
        default=None,
        description=(
            "optional stable id (campaign services filter email.routed by it); generated "
            "when omitted"
        ),
    )


class CampaignOut(ResponseModel):
    id: str
    name: str
    updated_at: datetime


class CampaignList(ResponseModel):
    items: list[CampaignOut]
    total: int


# --- channels: requests -------------------------------------------------------------------------


class ImapInboundIn(RequestModel):
    """Read the mailbox over IMAP."""

    kind: Literal["imap"] = "imap"
    host: HostName
    port: Port | None = Field(default=None, description="default: 993 with ssl, else 143")
    tls: TlsMode = TlsMode.SSL
    verify_tls: bool = Field(
        default=True, description="verify the server certificate; turn off only knowingly"
    )
    username: UserName
    password: Password | None = Field(
        default=None, description="write-only; omit it on update to keep the stored one"
    )
    folders: Annotated[list[FolderName], Field(max_length=100)] = Field(
        default_factory=lambda: ["INBOX"]
    )
    sync_all_folders: bool = Field(
        default=False, description="take mail from every receiving folder, not only `folders`"
    )
    after_fetch: AfterFetch = Field(
        default=AfterFetch.MARK_SEEN,
        description="what happens on the server once Kafka has the message",
    )
    move_to_folder: OptionalFolder = Field(
        default=None, description="target folder when after_fetch is `move`"
    )


class Pop3InboundIn(RequestModel):
    """Read the mailbox over POP3 (no folders: the maildrop is the inbox)."""

    kind: Literal["pop3"]
    host: HostName
    port: Port | None = Field(default=None, description="default: 995 with ssl, else 110")
    tls: TlsMode = TlsMode.SSL
    verify_tls: bool = Field(
        default=True, description="verify the server certificate; turn off only knowingly"
    )
    username: UserName
    password: Password | None = Field(
        default=None, description="write-only; omit it on update to keep the stored one"
    )
    after_fetch: Literal[AfterFetch.DELETE, AfterFetch.MARK_SEEN] = Field(
        default=AfterFetch.DELETE,
        description=(
            "`delete` (DELE once Kafka has the message) or `mark_seen`: leave it on the server "
            "(taken once, remembered by its UIDL)"
        ),
    )


class SmtpOutboundIn(RequestModel):
    """Send over SMTP."""

    kind: Literal["smtp"] = "smtp"
    host: HostName
    port: Port | None = Field(
        default=None, description="default: 465 with ssl, 587 with starttls, 25 plain"
    )
    tls: TlsMode = TlsMode.STARTTLS
    verify_tls: bool = True
    username: OptionalUserName = Field(default=None, description="omit for no authentication")
    password: Password | None = Field(
        default=None, description="write-only; omit it on update to keep the stored one"
    )


# --- channels: Exchange Online (Microsoft Graph) ------------------------------------------------
#
# Tenant id, client id and client secret are refused - never trimmed - when they start or end
# with a space or line break: a pasted space is the classic cause of Microsoft's "can not
# retrieve token", and the error names the field instead. Responses carry no secret or token.


def _no_padding(value: str) -> str:
    if value != value.strip():
        raise ValueError(
            "starts or ends with a space or line break (pasted with it?); Microsoft cannot "
            "issue a token for it - enter it without them"
        )
    if any(ord(char) < 32 for char in value):  # noqa: PLR2004 - control characters
        raise ValueError("must not contain control characters")
    return value


def _https_url(value: str) -> str:
    parts = urlsplit(value)
    local = parts.scheme == "http" and parts.hostname in {"localhost", "127.0.0.1"}
    if (parts.scheme != "https" and not local) or not parts.hostname or parts.fragment:
        raise ValueError(
            "must be an https URL without a fragment (http only for localhost), exactly as "
            "registered for the app in Azure"
        )
    return value


def _host_port(value: str) -> str:
    parts = urlsplit(f"https://{value}")
    if not parts.hostname or parts.path or parts.query or "@" in value:
        raise ValueError(
            "expected a host name with an optional port, e.g. login.microsoftonline.com"
        )
    return value.lower()


AppId = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_padding)]
HttpsUrl = Annotated[
    str, Field(max_length=2000), BeforeValidator(_blank_to_none), AfterValidator(_https_url)
]
HostPort = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=260),
    BeforeValidator(_blank_to_none),
    AfterValidator(_host_port),
]


class GraphAppIn(RequestModel):
    tenant_id: AppId = Field(description="Directory (tenant) id or domain; no spaces")
    client_id: AppId = Field(description="Application (client) id; no spaces")
    client_secret: Password | None = Field(
        default=None, description="write-only; omit it on update to keep the stored one"
    )
    mailbox: EmailAddress
    auth: GraphAuth = Field(
        default=GraphAuth.APP_ONLY,
        description="app_only (client credentials) or delegated (Save and authorise)",
    )
    redirect_uri: HttpsUrl | None = Field(
        default=None,
        description="delegated: the redirect URI registered in Azure; default: this API's "
        "/oauth/callback",
    )
    authority_host: HostPort | None = Field(
        default=None, description="identity platform host; default login.microsoftonline.com"
    )
    graph_url: HttpsUrl | None = Field(
        default=None, description="Graph base URL; default https://graph.microsoft.com/v1.0"
    )


class GraphInboundIn(GraphAppIn):
    """Read an Exchange Online mailbox through Microsoft Graph."""

    kind: Literal["graph"]
    sync_all_folders: bool = False
    after_fetch: AfterFetch = AfterFetch.MARK_SEEN
    move_to_folder: OptionalFolder = None


class GraphOutboundIn(GraphAppIn):
    """Send through Exchange Online (Graph sendMail)."""

    kind: Literal["graph"]


class GraphAppOut(ResponseModel):
    kind: Literal["graph"] = "graph"
    tenant_id: str
    client_id: str
    client_secret_set: bool
    mailbox: str
    auth: GraphAuth
    redirect_uri: str | None
    authority_host: str | None
    graph_url: str | None
    authorised: bool = Field(description="delegated: an administrator has signed in")
    authorised_at: datetime | None
    authorised_by: str | None


class GraphInboundOut(GraphAppOut):
    sync_all_folders: bool
    after_fetch: AfterFetch
    move_to_folder: str | None


class GraphOutboundOut(GraphAppOut):
    pass


def _kind_or(default: str) -> Callable[[Any], str]:
    """The ``kind`` of a settings object; bodies without one keep meaning ``default``."""

    def kind(value: Any) -> str:
        found = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
        return str(found or default)

    return kind


SETTINGS_KINDS = frozenset({"imap", "pop3", "smtp", "graph"})
"""The ``kind`` tags of inbound/outbound settings (pydantic names them in error locations)."""

InboundIn = Annotated[
    Annotated[ImapInboundIn, Tag("imap")]
    | Annotated[Pop3InboundIn, Tag("pop3")]
    | Annotated[GraphInboundIn, Tag("graph")],
    Discriminator(_kind_or("imap")),
]
OutboundIn = Annotated[
    Annotated[SmtpOutboundIn, Tag("smtp")] | Annotated[GraphOutboundIn, Tag("graph")],
    Discriminator(_kind_or("smtp")),
]


class ChannelIn(RequestModel):
    """Body of ``POST /channels``."""

    name: Name
    email_address: OptionalEmail = None
    default_campaign_id: OptionalId = None
    enabled: bool = Field(default=False, description="needs a default campaign")
    sync_recipient_only: bool = Field(
        default=False,
        description="take only mail addressed to email_address (To, Cc, Bcc/Delivered-To)",
    )
    inbound: InboundIn | None = None
    outbound: OutboundIn | None = None


class ChannelUpdate(ChannelIn):
    """Body of ``PUT /channels/{id}``: the whole channel, plus the revision it was based on."""

    revision: int = Field(
        ge=1, description="the revision the client read; a stale one is refused with 409"
    )


# --- channels: responses ------------------------------------------------------------------------


class ImapInboundOut(ResponseModel):
    kind: Literal["imap"] = "imap"
    host: str
    port: int
    tls: TlsMode
    verify_tls: bool
    username: str
    password_set: bool
    folders: list[str]
    sync_all_folders: bool
    after_fetch: AfterFetch
    move_to_folder: str | None


class Pop3InboundOut(ResponseModel):
    kind: Literal["pop3"] = "pop3"
    host: str
    port: int
    tls: TlsMode
    verify_tls: bool
    username: str
    password_set: bool
    after_fetch: AfterFetch


class SmtpOutboundOut(ResponseModel):
    kind: Literal["smtp"] = "smtp"
    host: str
    port: int
    tls: TlsMode
    verify_tls: bool
    username: str | None
    password_set: bool


class StatusOut(ResponseModel):
    """Active: validated and working. Inactive: never validated, or failing now (why, since)."""

    state: ChannelState
    reason: str | None = None
    step: str | None = None
    direction: Literal["inbound", "outbound"] | None = None
    at: datetime | None = None
    last_success_at: datetime | None = None


class ChannelOut(ResponseModel):
    id: str
    name: str
    email_address: str | None
    default_campaign_id: str | None
    default_campaign_name: str | None
    enabled: bool
    sync_recipient_only: bool
    inbound: ImapInboundOut | Pop3InboundOut | GraphInboundOut | None
    outbound: SmtpOutboundOut | GraphOutboundOut | None
    filter_count: int
    status: StatusOut
    revision: int
    updated_at: datetime


class ChannelList(ResponseModel):
    items: list[ChannelOut]
    total: int
    """How many channels match the search (all pages)."""
    limit: int | None = None
    offset: int = 0


StatusFilter = Literal["all", "active", "inactive"]


# --- API tokens ---------------------------------------------------------------------------------


class TokenIn(RequestModel):
    """Body of ``POST /tokens``."""

    name: Name = Field(description="what the token is for, e.g. 'campaign sync job'")
    role: Literal["admin", "viewer"] = "viewer"


class TokenOut(ResponseModel):
    id: str
    name: str
    role: Literal["admin", "viewer"]
    created_by: str
    created_at: datetime


class TokenCreated(TokenOut):
    token: str = Field(description="shown only in this response; stored hashed")


class TokenList(ResponseModel):
    items: list[TokenOut]
    total: int


class WhoAmI(ResponseModel):
    subject: str
    role: Literal["admin", "viewer"]
    method: Literal["oidc", "api-token", "admin-token"]


# --- filters ------------------------------------------------------------------------------------

Keyword = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_single_line),
]
Keywords = Annotated[list[Keyword], Field(max_length=100)]
HeaderFieldName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[!-9;-~]+$"),
]


class HeaderConditionIn(RequestModel):
    """The header named ``header`` holds any of ``keywords`` (case-insensitive)."""

    header: HeaderFieldName = Field(description="header field name, e.g. List-Id or X-Priority")
    keywords: Annotated[list[Keyword], Field(min_length=1, max_length=100)]


class FilterIn(RequestModel):
    """One filter. Every criterion given must hold; within a keyword list, any keyword matches.

    Criteria: keywords in the sender / subject / body (any of them found in its field),
    ``all_of`` (every word somewhere), ``regex`` (RE2 syntax, case-insensitive, searched in
    subject and body) and ``header_conditions``. A filter needs at least one criterion.
    """

    id: OptionalId = Field(default=None, description="kept on update; generated when omitted")
    name: Annotated[
        str, StringConstraints(strip_whitespace=True, max_length=200), AfterValidator(_single_line)
    ] = ""
    campaign_id: Id = Field(description="campaign that matching mail goes to; must exist")
    sender_keywords: Keywords = Field(default_factory=list)
    subject_keywords: Keywords = Field(default_factory=list)
    body_keywords: Keywords = Field(default_factory=list)
    all_of: Keywords = Field(default_factory=list, description="every one must appear")
    regex: Annotated[str | None, BeforeValidator(_blank_to_none)] = Field(
        default=None, max_length=500, description="RE2 syntax (no backreferences/look-around)"
    )
    header_conditions: Annotated[list[HeaderConditionIn], Field(max_length=20)] = Field(
        default_factory=list
    )


class HeaderConditionOut(ResponseModel):
    header: str
    keywords: list[str]


class FilterOut(ResponseModel):
    id: str
    name: str
    campaign_id: str
    campaign_name: str | None
    sender_keywords: list[str]
    subject_keywords: list[str]
    body_keywords: list[str]
    all_of: list[str]
    regex: str | None
    header_conditions: list[HeaderConditionOut]


class FilterListOut(ResponseModel):
    channel_id: str
    filters: list[FilterOut]
    revision: int = Field(description="0 while the channel never had filters")
    updated_at: datetime | None


class FilterListIn(RequestModel):
    """Body of ``PUT /channels/{id}/filters``: the whole ordered list; first match wins."""

    filters: Annotated[list[FilterIn], Field(max_length=200)]
    revision: int = Field(ge=0, description="the revision the client read (0: none yet)")


class FilterCreate(FilterIn):
    position: int | None = Field(
        default=None, ge=0, description="0-based place in the list; default: at the end"
    )


class FilterOrder(RequestModel):
    """Body of ``POST /channels/{id}/filters/reorder``: every filter id, in the new order."""

    order: Annotated[list[Id], Field(max_length=200)]
    revision: int | None = Field(default=None, ge=0, description="refuse with 409 unless current")


class SampleHeader(RequestModel):
    name: HeaderFieldName
    value: Annotated[str, Field(max_length=2000)]


class SampleMessage(RequestModel):
    """A message to try the channel's filters on: header fields and the body text."""

    headers: Annotated[list[SampleHeader], Field(max_length=100)] = Field(
        default_factory=list,
        description="e.g. [{name: From, value: ...}, {name: Subject, value: ...}]",
    )
    body: Annotated[str, Field(max_length=200_000)] = ""


class FilterCheck(ResponseModel):
    position: int
    filter_id: str
    name: str
    matched: bool


class RoutingTestResult(ResponseModel):
    """Where the channel's router would send the sample, and why."""

    campaign_id: str | None
    campaign_name: str | None
    reason: Literal["filter", "default", "unroutable"]
    filter_id: str | None = None
    filter_name: str | None = None
    explanation: str
    checked: list[FilterCheck] = Field(description="the filters tried, in order, up to the match")


# --- campaigns: updates -------------------------------------------------------------------------


class CampaignRename(RequestModel):
    name: Name


# --- bulk ---------------------------------------------------------------------------------------


class BulkAction(RequestModel):
    """Body of ``POST /channels/bulk``: one action on the selected channels."""

    action: Literal["enable", "disable", "delete"]
    ids: Annotated[list[Id], Field(min_length=1, max_length=500)]


class BulkItem(ResponseModel):
    id: str
    ok: bool
    status: int
    detail: str | None = None


class BulkResult(ResponseModel):
    items: list[BulkItem]
    succeeded: int
    failed: int


# --- validate -----------------------------------------------------------------------------------


class ValidateSettings(RequestModel):
    """Body of ``POST /channels/validate``: settings not saved yet.

    With ``channel_id``, omitted passwords are taken from that saved channel (the same rule
    as an update: only while host, port, user and TLS mode are unchanged).
    """

    channel_id: OptionalId = None
    email_address: OptionalEmail = Field(default=None, description="used as MAIL FROM")
    inbound: InboundIn | None = None
    outbound: OutboundIn | None = None
