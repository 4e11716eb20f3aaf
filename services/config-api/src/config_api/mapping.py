"""API bodies <-> Kafka events — pure (the secret box encrypts, nothing here does I/O).

Requests become events: plaintext secrets are encrypted with the active key, an omitted
secret keeps the stored one (re-encrypted if it used an older key). Events become responses:
secrets are dropped, only ``password_set`` says one is there.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from config_api.errors import InvalidInput, Problem
from config_api.graph_mapping import graph_inbound, graph_out, graph_outbound
from config_api.rules import LOGIN_FIELDS
from config_api.schemas import (
    CampaignOut,
    ChannelIn,
    ChannelOut,
    FilterIn,
    FilterListOut,
    FilterOut,
    GraphInboundIn,
    GraphInboundOut,
    GraphOutboundIn,
    GraphOutboundOut,
    HeaderConditionOut,
    ImapInboundIn,
    ImapInboundOut,
    Pop3InboundIn,
    Pop3InboundOut,
    SmtpOutboundIn,
    SmtpOutboundOut,
    StatusOut,
)
from email_channels.events import (
    Campaign,
    ChannelConfig,
    Filter,
    GraphApp,
    HeaderCondition,
    ImapInbound,
    Pop3Inbound,
    SmtpOutbound,
    TlsMode,
    utcnow,
)
from email_channels.secretbox import SecretDecryptError

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from pydantic import SecretStr

    from email_channels.events import ChannelFilters, Inbound, Outbound
    from email_channels.secretbox import EncryptedSecret, SecretBox

IMAP_PORTS = {TlsMode.SSL: 993, TlsMode.STARTTLS: 143, TlsMode.PLAIN: 143}
POP3_PORTS = {TlsMode.SSL: 995, TlsMode.STARTTLS: 110, TlsMode.PLAIN: 110}
SMTP_PORTS = {TlsMode.SSL: 465, TlsMode.STARTTLS: 587, TlsMode.PLAIN: 25}


def new_id() -> str:
    """A fresh server-side id: 32 lower-case hex digits."""
    return uuid.uuid4().hex


# --- requests -> events -------------------------------------------------------------------------


def channel_config(
    body: ChannelIn,
    *,
    channel_id: str,
    box: SecretBox,
    current: ChannelConfig | None = None,
    now: datetime | None = None,
) -> ChannelConfig:
    """The event for a create (``current`` None) or a full update of ``current``."""
    stored_in, stored_out = (current.inbound, current.outbound) if current else (None, None)
    inbound: Inbound | None = None
    if isinstance(body.inbound, GraphInboundIn):
        inbound = graph_inbound(body.inbound, stored_in, box)
    elif isinstance(body.inbound, Pop3InboundIn):
        inbound = _pop3(body.inbound, stored_in, box)
    elif body.inbound is not None:
        inbound = _imap(body.inbound, stored_in, box)
    outbound: Outbound | None = None
    if isinstance(body.outbound, GraphOutboundIn):
        outbound = graph_outbound(body.outbound, stored_out, box)
    elif body.outbound is not None:
        outbound = _smtp(body.outbound, stored_out, box)
    now = now or utcnow()
    new_password = any(
        side is not None
        and (getattr(side, "password", None) or getattr(side, "client_secret", None)) is not None
        for side in (body.inbound, body.outbound)
    )
    changed = (
        current is None
        or new_password
        or _settings(current.inbound) != _settings(inbound)
        or _settings(current.outbound) != _settings(outbound)
    )
    return ChannelConfig(
        id=channel_id,
        name=body.name,
        email_address=body.email_address,
        default_campaign_id=body.default_campaign_id,
        enabled=body.enabled,
        sync_recipient_only=body.sync_recipient_only,
        inbound=inbound,
        outbound=outbound,
        revision=current.revision + 1 if current else 1,
        updated_at=now,
        settings_changed_at=now if changed or current is None else current.settings_changed_at,
    )


def _settings(server: Inbound | Outbound | None) -> dict[str, object] | None:
    """A server's settings without the ciphertext (which changes on every key rotation)."""
    return server.model_dump(exclude={"password", "client_secret"}) if server else None


def campaign_event(name: str, *, campaign_id: str, now: datetime | None = None) -> Campaign:
    return Campaign(id=campaign_id, name=name, updated_at=now or utcnow())


def _imap(body: ImapInboundIn, stored: Inbound | None, box: SecretBox) -> ImapInbound:
    port = body.port or IMAP_PORTS[body.tls]
    password = _mailbox_password(body, port, stored, kind=ImapInbound, box=box, protocol="IMAP")
    return ImapInbound(
        host=body.host,
        port=port,
        tls=body.tls,
        verify_tls=body.verify_tls,
        username=body.username,
        password=password,
        folders=list(dict.fromkeys(body.folders)),
        sync_all_folders=body.sync_all_folders,
        after_fetch=body.after_fetch,
        move_to_folder=body.move_to_folder,
    )


def _pop3(body: Pop3InboundIn, stored: Inbound | None, box: SecretBox) -> Pop3Inbound:
    port = body.port or POP3_PORTS[body.tls]
    password = _mailbox_password(body, port, stored, kind=Pop3Inbound, box=box, protocol="POP3")
    return Pop3Inbound(
        host=body.host,
        port=port,
        tls=body.tls,
        verify_tls=body.verify_tls,
        username=body.username,
        password=password,
        after_fetch=body.after_fetch,
    )


def _mailbox_password(
    body: ImapInboundIn | Pop3InboundIn,
    port: int,
    stored: Inbound | None,
    *,
    kind: type[ImapInbound | Pop3Inbound],
    box: SecretBox,
    protocol: str,
) -> EncryptedSecret:
    """The password for an IMAP/POP3 login: the one typed, else the stored one for the same
    kind, server and user (a changed login needs it again)."""
    loc = ("body", "inbound", "password")
    kept = stored.password if isinstance(stored, kind) else None
    if body.password is None and isinstance(stored, kind):
        _refuse_moved_password(
            stored, host=body.host, port=port, username=body.username, tls=body.tls, loc=loc
        )
    password = _secret(body.password, kept, box, loc)
    if password is None:
        raise InvalidInput(
            Problem(
                loc,
                f"required: {protocol} needs the account's password (omit it only to keep "
                "the one already stored)",
            )
        )
    return password


def _refuse_moved_password(
    stored: ImapInbound | Pop3Inbound | SmtpOutbound,
    *,
    host: str,
    port: int,
    username: str | None,
    tls: TlsMode,
    loc: tuple[str, ...],
) -> None:
    """A stored password is only kept for the server and user it was entered for: otherwise
    a changed port or host would send it to whatever listens there."""
    new = {"host": host, "port": port, "username": username, "tls": tls}
    changed = [name for name in LOGIN_FIELDS if getattr(stored, name) != new[name]]
    if changed:
        raise InvalidInput(
            Problem(
                loc,
                f"required again because {', '.join(changed)} changed: the stored password "
                "was entered for the previous server and user, enter it for the new ones",
            )
        )


def _smtp(body: SmtpOutboundIn, stored: Outbound | None, box: SecretBox) -> SmtpOutbound:
    stored_password = stored.password if isinstance(stored, SmtpOutbound) else None
    # A stored password belongs to a login; without a username there is no login to keep it for.
    kept = stored_password if body.username is not None else None
    port = body.port or SMTP_PORTS[body.tls]
    loc = ("body", "outbound", "password")
    if body.password is None and kept is not None and isinstance(stored, SmtpOutbound):
        _refuse_moved_password(
            stored, host=body.host, port=port, username=body.username, tls=body.tls, loc=loc
        )
    return SmtpOutbound(
        host=body.host,
        port=port,
        tls=body.tls,
        verify_tls=body.verify_tls,
        username=body.username,
        password=_secret(body.password, kept, box, loc),
    )


def _secret(
    plaintext: SecretStr | None,
    stored: EncryptedSecret | None,
    box: SecretBox,
    loc: tuple[str, ...],
) -> EncryptedSecret | None:
    """Encrypt a new secret; otherwise keep the stored one, moved to the active key."""
    if plaintext is not None:
        return box.encrypt(plaintext.get_secret_value())
    if stored is None:
        return None
    try:
        return box.rotate(stored)
    except SecretDecryptError:
        raise InvalidInput(
            Problem(
                loc,
                f"the stored secret can no longer be decrypted (key id {stored.kid!r} is not "
                "in the keyring): send it again",
            )
        ) from None


# --- events -> responses ------------------------------------------------------------------------


def campaign_out(campaign: Campaign) -> CampaignOut:
    return CampaignOut(id=campaign.id, name=campaign.name, updated_at=campaign.updated_at)


def channel_out(
    channel: ChannelConfig,
    *,
    campaign: Campaign | None,
    filters: ChannelFilters | None,
    status: StatusOut,
) -> ChannelOut:
    return ChannelOut(
        id=channel.id,
        name=channel.name,
        email_address=channel.email_address,
        default_campaign_id=channel.default_campaign_id,
        default_campaign_name=campaign.name if campaign else None,
        enabled=channel.enabled,
        sync_recipient_only=channel.sync_recipient_only,
        inbound=_inbound_out(channel.inbound),
        outbound=_outbound_out(channel.outbound),
        filter_count=len(filters.filters) if filters else 0,
        status=status,
        revision=channel.revision,
        updated_at=channel.updated_at,
    )


def _inbound_out(
    inbound: Inbound | None,
) -> ImapInboundOut | Pop3InboundOut | GraphInboundOut | None:
    # IMAP and Exchange are offered by this API version; other kinds written by a newer release
    # are left out of the response rather than misreported.
    if isinstance(inbound, GraphApp):
        out = graph_out(inbound)
        return out if isinstance(out, GraphInboundOut) else None
    if isinstance(inbound, Pop3Inbound):
        return Pop3InboundOut(
            host=inbound.host,
            port=inbound.port,
            tls=inbound.tls,
            verify_tls=inbound.verify_tls,
            username=inbound.username,
            password_set=True,
            after_fetch=inbound.after_fetch,
        )
    if not isinstance(inbound, ImapInbound):
        return None
    return ImapInboundOut(
        host=inbound.host,
        port=inbound.port,
        tls=inbound.tls,
        verify_tls=inbound.verify_tls,
        username=inbound.username,
        password_set=True,
        folders=list(inbound.folders),
        sync_all_folders=inbound.sync_all_folders,
        after_fetch=inbound.after_fetch,
        move_to_folder=inbound.move_to_folder,
    )


def _outbound_out(outbound: Outbound | None) -> SmtpOutboundOut | GraphOutboundOut | None:
    if isinstance(outbound, GraphApp):
        out = graph_out(outbound)
        return out if isinstance(out, GraphOutboundOut) else None
    if not isinstance(outbound, SmtpOutbound):
        return None
    return SmtpOutboundOut(
        host=outbound.host,
        port=outbound.port,
        tls=outbound.tls,
        verify_tls=outbound.verify_tls,
        username=outbound.username,
        password_set=outbound.password is not None,
    )


# --- filters ------------------------------------------------------------------------------------


def filter_event(body: FilterIn, *, filter_id: str | None = None) -> Filter:
    """A filter from its request body; the id is kept, taken from the body, or generated."""
    return Filter(
        id=filter_id or body.id or new_id(),
        name=body.name,
        campaign_id=body.campaign_id,
        sender_keywords=list(dict.fromkeys(body.sender_keywords)),
        subject_keywords=list(dict.fromkeys(body.subject_keywords)),
        body_keywords=list(dict.fromkeys(body.body_keywords)),
        all_of=list(dict.fromkeys(body.all_of)),
        regex=body.regex,
        header_conditions=[
            HeaderCondition(header=c.header, keywords=list(dict.fromkeys(c.keywords)))
            for c in body.header_conditions
        ],
    )


def filter_out(rule: Filter, campaign_of: Callable[[str], Campaign | None]) -> FilterOut:
    campaign = campaign_of(rule.campaign_id)
    return FilterOut(
        id=rule.id,
        name=rule.name,
        campaign_id=rule.campaign_id,
        campaign_name=campaign.name if campaign else None,
        sender_keywords=list(rule.sender_keywords),
        subject_keywords=list(rule.subject_keywords),
        body_keywords=list(rule.body_keywords),
        all_of=list(rule.all_of),
        regex=rule.regex,
        header_conditions=[
            HeaderConditionOut(header=c.header, keywords=list(c.keywords))
            for c in rule.header_conditions
        ],
    )


def filter_list_out(
    channel_id: str, filters: ChannelFilters | None, campaign_of: Callable[[str], Campaign | None]
) -> FilterListOut:
    return FilterListOut(
        channel_id=channel_id,
        filters=[filter_out(rule, campaign_of) for rule in filters.filters] if filters else [],
        revision=filters.revision if filters else 0,
        updated_at=filters.updated_at if filters else None,
    )
