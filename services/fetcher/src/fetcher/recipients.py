"""Is a message addressed to the channel? Decided from its header block alone (pure).

A Bcc copy carries no Bcc header, so the delivery headers servers add are read too:
Delivered-To (Postfix, Dovecot, Exim), X-Original-To (Postfix), Envelope-To (Exim).
Addresses are compared without case; display names and encoded words are never decoded
(an address is ASCII or raw UTF-8 in the header bytes, RFC 6532).
"""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import TYPE_CHECKING, Final

from email_channels.errors import ChannelMisconfigured

if TYPE_CHECKING:
    from email_channels.events import ChannelConfig

RECIPIENT_HEADERS: Final = (
    "To",
    "Cc",
    "Bcc",
    "Resent-To",
    "Resent-Cc",
    "Delivered-To",
    "X-Original-To",
    "Envelope-To",
)
"""The headers looked at (also the IMAP ``HEADER.FIELDS`` list asked for)."""


def channel_recipient(channel: ChannelConfig) -> str | None:
    """The address mail must be for when the channel syncs "recipient only", else None.

    A channel with the option on and no address is misconfigured (config-api refuses it; a
    record written otherwise stops here with a status that says so)."""
    if not channel.sync_recipient_only:
        return None
    if not channel.email_address:
        raise ChannelMisconfigured(
            "sync_recipient_only is on but the channel has no email_address", step="config"
        )
    return str(channel.email_address)


def recipients_of(header_block: bytes) -> set[str]:
    """Every address named in :data:`RECIPIENT_HEADERS`, lower-cased."""
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(header_block)
    except Exception:  # malformed headers: nothing can be read from them
        return set()
    values: list[str] = []
    for name in RECIPIENT_HEADERS:
        values.extend(str(value) for value in headers.get_all(name, []))
    return {address.strip().lower() for _, address in getaddresses(values) if "@" in address}


def addressed_to(header_block: bytes, address: str) -> bool:
    """Does the header block name ``address`` as a recipient?"""
    return address.strip().lower() in recipients_of(header_block)
