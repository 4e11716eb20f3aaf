"""Reading ``email.routed`` as a campaign service.

- :func:`campaign_of` reads the ``campaign-id`` record header, so a consumer skips other
  campaigns' records without decoding their JSON;
- :func:`read_routed` decodes a record value into :class:`RoutedEmail` (unknown fields from newer
  writers are ignored; a value that does not fit the contract raises ``PoisonRecord``);
- :func:`raw_mime` and :func:`attachment_content` resolve claim-check references through the
  blob store interface (local disk or S3, see ``email_channels.blobstore.blob_store_from_url``);
  the store verifies the sha256, so a corrupted blob raises instead of returning wrong bytes;
- :func:`needs_no_answer` is the rule every auto-answering service needs: never answer an
  auto-reply, a bounce or a mail loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from email_channels.codec import decode, header
from email_channels.events import Attachment, RoutedEmail
from email_channels.headers import CAMPAIGN_HEADER

if TYPE_CHECKING:
    from collections.abc import Sequence

    from email_channels.blobstore import BlobStore


def campaign_of(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """The campaign id a routed record is for, from its record header (no JSON decoding)."""
    return header(list(headers or ()), CAMPAIGN_HEADER)


def read_routed(value: bytes | None) -> RoutedEmail:
    """Decode one ``email.routed`` record value."""
    return decode(RoutedEmail, value)


async def raw_mime(email: RoutedEmail, store: BlobStore) -> bytes | None:
    """The message exactly as it was fetched, or None when the router kept no copy."""
    if email.raw_ref is None:
        return None
    return await store.get(email.raw_ref)


async def attachment_content(attachment: Attachment, store: BlobStore) -> bytes | None:
    """An attachment's bytes, or None when the router did not store it (e.g. too large)."""
    if attachment.blob is None:
        return None
    return await store.get(attachment.blob)


def needs_no_answer(email: RoutedEmail) -> bool:
    """True for mail an automatic answer must never go to: auto-replies, bounces, loops."""
    return email.flags.auto_reply or email.flags.bounce or email.flags.loop
