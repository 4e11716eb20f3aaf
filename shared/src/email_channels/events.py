"""Versioned event models: the JSON contract of every topic (design.md §3).

Rules (house style):
- frozen models, a ``schema_version`` literal, unknown fields ignored by readers;
- an added optional field keeps the version, a renamed/removed field makes a new version;
- the JSON Schema of every model is committed under ``shared/schemas`` and checked by a test
  (regenerate with ``make schemas``).

Header injection: every field that ends up in a mail header is refused when it holds CR or LF.
"""

from __future__ import annotations

import binascii
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import pybase64
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)

from email_channels.blobstore import BlobRef
from email_channels.secretbox import EncryptedSecret


def utcnow() -> datetime:
    return datetime.now(UTC)


def _decode_b64(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:  # pybase64: the stdlib's rules (validate=True), SIMD-fast (~35x for 25 KB mail)
            return pybase64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("not valid base64") from exc
    raise ValueError("expected base64 text")


def _encode_b64(value: bytes) -> str:
    return pybase64.b64encode(value).decode("ascii")


Base64Bytes = Annotated[
    bytes,
    PlainValidator(_decode_b64),
    PlainSerializer(_encode_b64, return_type=str),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]
"""Bytes carried as one line of standard base64 in JSON."""


def _no_line_breaks(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain CR or LF (header injection)")
    return value


HeaderText = Annotated[str, AfterValidator(_no_line_breaks)]
"""Text that will be written into a mail header: no CR/LF."""

_ADDRESS = re.compile(r"^[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+$")


def _email_address(value: str) -> str:
    value = _no_line_breaks(value.strip())
    if not _ADDRESS.match(value):
        raise ValueError("not an email address (expected local@domain)")
    return value


EmailAddress = Annotated[str, AfterValidator(_email_address)]
Id = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@-]+$")]


class Contract(BaseModel):
    """Base of every event: frozen, and tolerant of fields added by newer writers."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


# --- config: channels, filters, campaigns ------------------------------------------------------


class TlsMode(StrEnum):
    SSL = "ssl"
    STARTTLS = "starttls"
    PLAIN = "plain"


class AfterFetch(StrEnum):
    """What the fetcher does to a message on the server, only after Kafka acknowledged it."""

    DELETE = "delete"
    MARK_SEEN = "mark_seen"
    MOVE = "move"


class MailServer(Contract):
    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)]
    tls: TlsMode = TlsMode.SSL
    verify_tls: bool = True
    username: Annotated[str, Field(min_length=1, max_length=320)]
    password: EncryptedSecret


class ImapInbound(MailServer):
    kind: Literal["imap"] = "imap"
    folders: list[str] = Field(default_factory=lambda: ["INBOX"])
    sync_all_folders: bool = False
    after_fetch: AfterFetch = AfterFetch.MARK_SEEN
    move_to_folder: str | None = None


class Pop3Inbound(MailServer):
    kind: Literal["pop3"] = "pop3"
    after_fetch: Literal[AfterFetch.DELETE, AfterFetch.MARK_SEEN] = AfterFetch.DELETE


class GraphAuth(StrEnum):
    """How the app gets its Graph token."""

    APP_ONLY = "app_only"
    """Client credentials: the app's own permissions (Mail.ReadWrite, Mail.Send application)."""
    DELEGATED = "delegated"
    """Authorisation code with PKCE ("Save and authorise"): a signed-in user's permissions."""


class GraphApp(Contract):
    """An Exchange Online (Microsoft Graph) app registration and mailbox."""

    tenant_id: Annotated[str, Field(min_length=1)]
    client_id: Annotated[str, Field(min_length=1)]
    client_secret: EncryptedSecret
    mailbox: EmailAddress
    authority_host: str | None = Field(
        default=None, description="identity platform host; default login.microsoftonline.com"
    )
    auth: GraphAuth = GraphAuth.APP_ONLY
    graph_url: str | None = Field(
        default=None, description="Graph API base URL; default https://graph.microsoft.com/v1.0"
    )
    redirect_uri: str | None = Field(
        default=None, description="delegated: the redirect URI registered for the app in Azure"
    )
    token_cache: EncryptedSecret | None = Field(
        default=None, description="delegated: the msal token cache (refresh token), encrypted"
    )
    authorised_at: datetime | None = Field(
        default=None, description="delegated: when an administrator last signed in"
    )
    authorised_by: str | None = Field(
        default=None, description="delegated: the administrator who signed in"
    )
    pending_authorisation: EncryptedSecret | None = Field(
        default=None, description="delegated: the sign-in in progress (PKCE verifier), encrypted"
    )


class GraphInbound(GraphApp):
    kind: Literal["graph"] = "graph"
    sync_all_folders: bool = False
    after_fetch: AfterFetch = AfterFetch.MARK_SEEN
    move_to_folder: str | None = None


class SmtpOutbound(Contract):
    kind: Literal["smtp"] = "smtp"
    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)]
    tls: TlsMode = TlsMode.STARTTLS
    verify_tls: bool = True
    username: str | None = None
    password: EncryptedSecret | None = None


class GraphOutbound(GraphApp):
    kind: Literal["graph"] = "graph"


Inbound = Annotated[ImapInbound | Pop3Inbound | GraphInbound, Field(discriminator="kind")]
Outbound = Annotated[SmtpOutbound | GraphOutbound, Field(discriminator="kind")]


class ChannelConfig(Contract):
    """Value of ``email.channels`` (key: channel id). A tombstone (null value) deletes it."""

    schema_version: Literal[1] = 1
    id: Id
    name: Annotated[str, Field(min_length=1, max_length=200)]
    email_address: EmailAddress | None = None
    default_campaign_id: Id | None = None
    enabled: bool = False
    sync_recipient_only: bool = False
    inbound: Inbound | None = None
    outbound: Outbound | None = None
    delivery_guarantee: Literal["at-most-once", "at-least-once"] = Field(
        default="at-most-once",
        description="when the sender finds an intent to send without an outcome (it crashed "
        "between SMTP DATA and reporting): at-most-once reports 'unknown', at-least-once sends "
        "again (same Message-ID)",
    )
    revision: int = Field(default=1, ge=1, description="increases by one on every write")
    updated_at: datetime = Field(default_factory=utcnow)
    settings_changed_at: datetime | None = Field(
        default=None,
        description=(
            "when the inbound/outbound settings last changed (a new password included); health "
            "reports older than this describe the previous settings"
        ),
    )


class HeaderCondition(Contract):
    """One header-field condition of a filter: any keyword found in any value of the header.

    ``header`` is a header field name (case-insensitive, e.g. ``X-Priority``, ``List-Id``);
    keywords are case-insensitive substrings of the *decoded* header value(s). A message
    without the header does not satisfy the condition.
    """

    header: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[!-9;-~]+$")]
    keywords: Annotated[list[str], Field(min_length=1)]


class Filter(Contract):
    """One routing rule. Keywords are case-insensitive; any keyword of a field matches.

    ``header_conditions`` (added in 1.x, optional): every condition must hold, each by any of
    its keywords; a filter with only header conditions is a valid filter. ``regex`` is checked
    at save time by :func:`email_channels.filter_regex.compile_filter_regex` (a linear-time
    engine: RE2 syntax, no backreferences or look-around).
    """

    id: Id
    name: str = ""
    campaign_id: Id
    sender_keywords: list[str] = Field(default_factory=list)
    subject_keywords: list[str] = Field(default_factory=list)
    body_keywords: list[str] = Field(default_factory=list)
    all_of: list[str] = Field(default_factory=list, description="every one must appear")
    regex: str | None = None
    header_conditions: list[HeaderCondition] = Field(
        default_factory=list,
        description="every condition must hold: any keyword in the named header's value",
    )


class ChannelFilters(Contract):
    """Value of ``email.filters`` (key: channel id): the ordered list; first match wins."""

    schema_version: Literal[1] = 1
    channel_id: Id
    filters: list[Filter] = Field(default_factory=list)
    revision: int = Field(default=1, ge=1)
    updated_at: datetime = Field(default_factory=utcnow)


class Campaign(Contract):
    """Value of ``email.campaigns`` (key: campaign id)."""

    schema_version: Literal[1] = 1
    id: Id
    name: Annotated[str, Field(min_length=1, max_length=200)]
    updated_at: datetime = Field(default_factory=utcnow)


class ApiToken(Contract):
    """Value of ``email.api-tokens`` (key: token id): a static API token, stored hashed.

    The token itself (``ecat_<id>_<secret>``) is shown once at creation; only the SHA-256 of
    the whole token is kept (tokens are 256-bit random, so a fast hash is enough).
    A tombstone revokes it.
    """

    schema_version: Literal[1] = 1
    id: Id
    name: Annotated[str, Field(min_length=1, max_length=200)]
    role: Literal["admin", "viewer"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    created_by: str
    created_at: datetime = Field(default_factory=utcnow)


class ChannelState(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class ChannelStatus(Contract):
    """Value of ``email.channel-status`` (key: ``<channel id>/<direction>``, see :attr:`key`)."""

    schema_version: Literal[1] = 1
    channel_id: Id
    direction: Literal["inbound", "outbound"]
    state: ChannelState
    reason: str | None = None
    step: str | None = Field(default=None, description="failing step: dns, tcp, tls, auth, folder")
    reported_by: str
    at: datetime = Field(default_factory=utcnow)
    last_success_at: datetime | None = None

    @property
    def key(self) -> str:
        """Record key: ``<channel id>/<direction>``, so the fetcher's inbound health and the
        sender's outbound health do not overwrite each other in the compacted topic."""
        return status_key(self.channel_id, self.direction)


def status_key(channel_id: str, direction: Literal["inbound", "outbound"]) -> str:
    return f"{channel_id}/{direction}"


# --- fetch --------------------------------------------------------------------------------------


class SourceIdentity(Contract):
    """Where a message came from, stable across re-fetches (the dedup key)."""

    protocol: Literal["imap", "pop3", "graph"]
    folder: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None
    uidl: str | None = None
    graph_id: str | None = None

    @property
    def key(self) -> str:
        match self.protocol:
            case "imap":
                return f"imap:{self.folder}:{self.uidvalidity}:{self.uid}"
            case "pop3":
                return f"pop3:{self.uidl}"
            case "graph":
                return f"graph:{self.graph_id}"


class FolderCursor(Contract):
    uidvalidity: int
    last_uid: int = 0
    recheck_through: int | None = Field(
        default=None,
        description="after a UIDVALIDITY change: UIDs up to this one were present when the "
        "folder was renumbered and are checked against what the channel already published",
    )


class FetchCursor(Contract):
    """Value of ``email.fetch-cursors`` (key: channel id): how far the channel was fetched."""

    schema_version: Literal[1] = 1
    channel_id: Id
    folders: dict[str, FolderCursor] = Field(default_factory=dict)
    delta_links: dict[str, str] = Field(
        default_factory=dict, description="Graph: folder id -> delta link to continue from"
    )
    settled: list[str] = Field(
        default_factory=list,
        description="Graph: short hashes of messages marked read in the last round (their "
        "change comes back in the next delta and is not new mail)",
    )
    token_cache: EncryptedSecret | None = Field(
        default=None, description="Graph delegated: the token cache after a refresh (rotated)"
    )
    token_cache_authorised_at: datetime | None = Field(
        default=None, description="Graph delegated: the sign-in the rotated cache descends from"
    )
    uidls: list[str] | None = Field(
        default=None,
        description="POP3: the UIDLs taken that were still on the server at the last sync",
    )
    unsettled: list[SourceIdentity] = Field(
        default_factory=list,
        description="Published to email.raw and acknowledged, but the after-fetch action "
        "(mark seen / move / delete) failed: the next session, also after a restart, settles "
        "them first and does not publish them again",
    )
    updated_at: datetime = Field(default_factory=utcnow)


class RawEmail(Contract):
    """Value of ``email.raw`` (key: channel id): one fetched message, MIME untouched.

    Exactly one of ``raw_mime`` (inline, small messages) and ``raw_ref`` (claim-check) is set.
    """

    schema_version: Literal[1] = 1
    email_id: Id = Field(description="stable id: derived from channel id and source identity")
    channel_id: Id
    source: SourceIdentity
    fetched_at: datetime = Field(default_factory=utcnow)
    size: int = Field(ge=0)
    sha256: str
    message_id: str | None = None
    raw_mime: Base64Bytes | None = None
    raw_ref: BlobRef | None = None


# --- route --------------------------------------------------------------------------------------


class Address(Contract):
    name: HeaderText | None = None
    address: HeaderText


class Attachment(Contract):
    filename: str | None = None
    content_type: str
    size: int = Field(ge=0)
    sha256: str
    blob: BlobRef | None = None
    inline: bool = False
    content_id: str | None = None


class RoutingReason(Contract):
    """Why the campaign: a filter matched, the channel's default, or ``thread``: a reply to a
    message this product routed or sent, kept in that message's conversation and campaign."""

    kind: Literal["filter", "default", "thread"]
    filter_id: str | None = None
    thread_message_id: str | None = Field(
        default=None, description="kind=thread: the Message-ID of the earlier message"
    )


class EmailFlags(Contract):
    auto_reply: bool = False
    bounce: bool = False
    bounced_message_id: str | None = None
    bounced_recipients: list[str] = Field(default_factory=list)
    loop: bool = False
    headers_repaired: bool = False
    """The header block was broken (junk lines before it, or fields dropped) and was repaired."""
    parse_limits: list[str] = Field(default_factory=list)
    """Parse bounds the message went over (e.g. ``parts``, ``depth``, ``header_size``,
    ``decoded_size``, ``time``): the record holds what could be read within them."""


class UndecodedHeader(Contract):
    """A header field sent as raw 8-bit bytes without RFC 2047 encoding, and how it was read.

    ``sha256`` is the hash of the undecoded bytes, so a reader can tell the text was guessed.
    """

    name: str
    charset: str
    sha256: str


class RoutedEmail(Contract):
    """Value of ``email.routed`` (key: conversation id; header ``campaign-id``)."""

    schema_version: Literal[1] = 1
    email_id: Id
    channel_id: Id
    campaign_id: Id
    reason: RoutingReason
    conversation_id: str
    message_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = Field(default_factory=list)
    from_: Address | None = Field(default=None, alias="from")
    reply_to: list[Address] = Field(default_factory=list)
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    subject: str | None = None
    date: datetime | None = None
    text_body: str | None = None
    html_body: str | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    raw_ref: BlobRef | None = None
    source: SourceIdentity
    flags: EmailFlags = Field(default_factory=EmailFlags)
    undecoded_headers: list[UndecodedHeader] = Field(default_factory=list)
    routed_at: datetime = Field(default_factory=utcnow)


class RouterMark(Contract):
    """Value of ``email.router-state`` (internal to the router): what it has routed and what
    the sender has sent, so re-fetches are dropped and replies follow their thread.

    Keys: ``email/<email id>`` (kind ``routed``: an email routed, or dropped as a duplicate of
    the mark's Message-ID) and ``sent/<outbound id>`` (kind ``sent``). Readers index them by
    email id, by channel + Message-ID (duplicate window, thread affinity) and by conversation.
    """

    schema_version: Literal[1] = 1
    kind: Literal["routed", "sent"]
    channel_id: str
    email_id: str | None = None
    outbound_id: str | None = None
    message_id: str | None = None
    content_sha256: str | None = Field(
        default=None, description="hash of the parsed content, without trace headers"
    )
    conversation_id: str | None = None
    campaign_id: str | None = None
    at: datetime = Field(default_factory=utcnow)


# --- send ---------------------------------------------------------------------------------------


class OutboundAttachment(Contract):
    filename: HeaderText
    content_type: HeaderText = "application/octet-stream"
    content: Base64Bytes | None = None
    blob: BlobRef | None = None
    inline: bool = False
    content_id: HeaderText | None = None


class OutboundEmail(Contract):
    """Value of ``email.outbound`` (key: conversation id), written by campaign services.

    ``outbound_id`` is the idempotency key: the sender sends each id at most once.
    """

    schema_version: Literal[1] = 1
    outbound_id: Id
    channel_id: Id
    conversation_id: str | None = None
    from_: Address | None = Field(
        default=None, alias="from", description="defaults to the channel's address"
    )
    to: list[Address] = Field(min_length=1)
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    subject: HeaderText = ""
    text_body: str | None = None
    html_body: str | None = None
    in_reply_to: HeaderText | None = None
    references: list[HeaderText] = Field(default_factory=list)
    attachments: list[OutboundAttachment] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    campaign_id: Id | None = Field(
        default=None,
        description="the sending campaign; replies to this mail are routed back to it",
    )


class DeliveryStatus(StrEnum):
    """Final: sent, failed, rejected, unknown (exactly one per outbound id). Not final:
    sending (the intent, recorded before the message goes out) and deferred (waiting in a
    retry topic)."""

    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    REJECTED = "rejected"
    SENDING = "sending"
    UNKNOWN = "unknown"
    """Maybe delivered: the sender crashed or lost the connection after handing the message
    over and before the server's answer was recorded. Not resent, to never send twice."""

    @property
    def final(self) -> bool:
        return self not in {DeliveryStatus.SENDING, DeliveryStatus.DEFERRED}


class DeliveryEvent(Contract):
    """Value of ``email.delivery`` (key: outbound id)."""

    schema_version: Literal[1] = 1
    outbound_id: Id
    channel_id: str
    conversation_id: str | None = None
    status: DeliveryStatus
    transport: Literal["smtp", "graph", "none"]
    reason: str | None = None
    server_response: str | None = None
    smtp_code: int | None = None
    message_id: str | None = None
    attempt: int = 1
    retry_level: int | None = Field(
        default=None,
        description="deferred: the retry topic level (1, 2, ...) the outbound now waits in",
    )
    retry_at: datetime | None = Field(default=None, description="deferred: when it is tried again")
    at: datetime = Field(default_factory=utcnow)
    campaign_id: str | None = Field(
        default=None,
        description="the outbound's campaign id; the router routes replies to it",
    )


# --- dead letters -------------------------------------------------------------------------------


class DeadLetter(Contract):
    """Value of ``email.dlq`` (key: the original record's key). Nothing is silently dropped."""

    schema_version: Literal[1] = 1
    stage: str
    source_topic: str
    partition: int
    offset: int
    error_kind: str
    error_message: str
    retriable: bool
    attempts: int = 1
    original_key: Base64Bytes | None = None
    original_value: Base64Bytes | None = None
    original_value_ref: BlobRef | None = None
    original_headers: dict[str, str] = Field(default_factory=dict)
    at: datetime = Field(default_factory=utcnow)
    channel_id: str | None = Field(
        default=None, description="fetcher: the channel whose mailbox holds the message"
    )
    source: SourceIdentity | None = Field(
        default=None,
        description="fetcher: where the message is on the mail server (it is left there); "
        "source_topic is then the topic it was meant for, partition and offset -1",
    )


TOPIC_MODELS: dict[str, type[Contract]] = {
    "ChannelConfig": ChannelConfig,
    "ChannelFilters": ChannelFilters,
    "Campaign": Campaign,
    "ApiToken": ApiToken,
    "ChannelStatus": ChannelStatus,
    "FetchCursor": FetchCursor,
    "RawEmail": RawEmail,
    "RoutedEmail": RoutedEmail,
    "OutboundEmail": OutboundEmail,
    "DeliveryEvent": DeliveryEvent,
    "DeadLetter": DeadLetter,
    "RouterMark": RouterMark,
}
"""Model name (as in :data:`email_channels.topics.SPECS`) -> model class."""
