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
from config_api.schemas import (
    CampaignOut,
    ChannelIn,
    ChannelOut,
    GraphInboundIn,
    GraphInboundOut,
    GraphOutboundIn,
    GraphOutboundOut,
    ImapInboundIn,
    ImapInboundOut,
    SmtpOutboundIn,
    SmtpOutboundOut,
    StatusOut,
)
from email_channels.events import (
    Campaign,
    ChannelConfig,
    ChannelState,
    GraphApp,
    ImapInbound,
    SmtpOutbound,
    TlsMode,
    utcnow,
)
from email_channels.secretbox import SecretDecryptError

if TYPE_CHECKING:
    from datetime import datetime

    from pydantic import SecretStr

    from email_channels.events import ChannelFilters, ChannelStatus, Inbound, Outbound
    from email_channels.secretbox import EncryptedSecret, SecretBox

IMAP_PORTS = {TlsMode.SSL: 993, TlsMode.STARTTLS: 143, TlsMode.PLAIN: 143}
SMTP_PORTS = {TlsMode.SSL: 465, TlsMode.STARTTLS: 587, TlsMode.PLAIN: 25}
NOT_VALIDATED = "not validated yet: no fetcher or sender has reported on this channel"


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
    elif body.inbound is not None:
        inbound = _imap(body.inbound, stored_in, box)
    outbound: Outbound | None = None
    if isinstance(body.outbound, GraphOutboundIn):
        outbound = graph_outbound(body.outbound, stored_out, box)
    elif body.outbound is not None:
        outbound = _smtp(body.outbound, stored_out, box)
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
        updated_at=now or utcnow(),
    )


def campaign_event(name: str, *, campaign_id: str, now: datetime | None = None) -> Campaign:
    return Campaign(id=campaign_id, name=name, updated_at=now or utcnow())


def _imap(body: ImapInboundIn, stored: Inbound | None, box: SecretBox) -> ImapInbound:
    loc = ("body", "inbound", "password")
    password = _secret(
        body.password, stored.password if isinstance(stored, ImapInbound) else None, box, loc
    )
    if password is None:
        raise InvalidInput(
            Problem(
                loc,
                "required: IMAP needs the account's password (omit it only to keep "
                "the one already stored)",
            )
        )
    return ImapInbound(
        host=body.host,
        port=body.port or IMAP_PORTS[body.tls],
        tls=body.tls,
        verify_tls=body.verify_tls,
        username=body.username,
        password=password,
        folders=list(dict.fromkeys(body.folders)),
        sync_all_folders=body.sync_all_folders,
        after_fetch=body.after_fetch,
        move_to_folder=body.move_to_folder,
    )


def _smtp(body: SmtpOutboundIn, stored: Outbound | None, box: SecretBox) -> SmtpOutbound:
    stored_password = stored.password if isinstance(stored, SmtpOutbound) else None
    # A stored password belongs to a login; without a username there is no login to keep it for.
    kept = stored_password if body.username is not None else None
    return SmtpOutbound(
        host=body.host,
        port=body.port or SMTP_PORTS[body.tls],
        tls=body.tls,
        verify_tls=body.verify_tls,
        username=body.username,
        password=_secret(body.password, kept, box, ("body", "outbound", "password")),
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
    status: ChannelStatus | None,
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
        status=status_out(status),
        revision=channel.revision,
        updated_at=channel.updated_at,
    )


def combined_status(*reports: ChannelStatus | None) -> ChannelStatus | None:
    """One indicator from the inbound and outbound health reports of a channel.

    Any failing direction makes the channel inactive (the most recent failure is shown);
    otherwise the most recent success; ``None`` when nothing was ever reported.
    """
    known = [report for report in reports if report is not None]
    failing = [report for report in known if report.state is ChannelState.INACTIVE]
    candidates = failing or known
    return max(candidates, key=lambda report: report.at) if candidates else None


def status_out(status: ChannelStatus | None) -> StatusOut:
    if status is None:
        return StatusOut(state=ChannelState.INACTIVE, reason=NOT_VALIDATED)
    return StatusOut(
        state=status.state,
        reason=status.reason,
        step=status.step,
        direction=status.direction,
        at=status.at,
        last_success_at=status.last_success_at,
    )


def _inbound_out(inbound: Inbound | None) -> ImapInboundOut | GraphInboundOut | None:
    # IMAP and Exchange are offered by this API version; other kinds written by a newer release
    # are left out of the response rather than misreported.
    if isinstance(inbound, GraphApp):
        out = graph_out(inbound)
        return out if isinstance(out, GraphInboundOut) else None
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
