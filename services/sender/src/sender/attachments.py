"""Attachment bytes for an outbound email: inline base64 or a claim-check in the blob store.

The total size is checked against the limit *before* any blob is read, from the sizes the
event declares (a BlobRef names its size, and the store verifies it on read), so an
oversized message is rejected whole — never half-sent, never loaded into memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sender.errors import MessageRejected

if TYPE_CHECKING:
    from email_channels.blobstore import BlobStore
    from email_channels.events import OutboundAttachment, OutboundEmail

DEFAULT_MAX_TOTAL_BYTES = 20 * 1024 * 1024
"""Attachments up to 20 MB in total (design.md §2, Outbound)."""


def declared_size(attachment: OutboundAttachment) -> int:
    if attachment.content is not None:
        return len(attachment.content)
    if attachment.blob is not None:
        return attachment.blob.size
    return 0


async def load_attachments(
    outbound: OutboundEmail,
    blobs: BlobStore,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> list[bytes]:
    """The bytes of each attachment, in order.

    Raises MessageRejected (too large, no content) or the blob
    store's own errors (BlobNotFound is permanent, BlobStoreUnavailable transient).
    """
    total = sum(declared_size(a) for a in outbound.attachments)
    if total > max_total_bytes:
        raise MessageRejected(
            f"attachments total {total} bytes, above the limit of {max_total_bytes} bytes"
        )
    contents: list[bytes] = []
    for index, attachment in enumerate(outbound.attachments):
        if attachment.content is not None:
            contents.append(attachment.content)
        elif attachment.blob is not None:
            contents.append(await blobs.get(attachment.blob))
        else:
            raise MessageRejected(f"attachments[{index}] has neither content nor blob")
    return contents
