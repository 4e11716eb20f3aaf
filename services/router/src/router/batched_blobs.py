"""The blob puts of one routing transaction, written together just before it commits.

A routed record names its raw MIME and attachments by reference (:class:`BlobRef`, the
sha256 of the bytes), so the reference is known the moment the bytes are: :meth:`put` hashes
and keeps the bytes, and :meth:`flush` (the routing loop's ``before_commit``) writes everything
kept in one worker-thread call for a local store -- or concurrently for any other store --
then makes it durable (:meth:`LocalBlobStore.sync`, one ``syncfs``). The transaction commits
only after the flush returned, so no committed record names a blob that is not stored.

Why: one thread hop per blob (two per mail) cost more than the routing itself (event loop
wake-ups and GIL hand-overs, measured with py-spy under ``bench/bench_router.py``). Memory is
bounded: past ``max_pending_bytes`` the kept bytes are written at once (not yet synced).
A blob kept by an aborted transaction is written with the next flush (content-addressed:
harmless, and the retried batch puts the same bytes again).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from email_channels.blobstore import BlobRef, LocalBlobStore

if TYPE_CHECKING:
    from email_channels.blobstore import BlobStore

MAX_PENDING_BYTES = 64 * 1024 * 1024
"""Bytes kept before they are written early (a batch of big attachments)."""
WRITE_CONCURRENCY = 8
"""Puts in flight at once into a store other than the local disk (e.g. S3)."""


class BatchedBlobs:
    """A :class:`~email_channels.blobstore.BlobStore` whose puts are written on :meth:`flush`."""

    def __init__(self, store: BlobStore, *, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.store = store
        self._max_pending_bytes = max_pending_bytes
        self._pending: dict[str, tuple[BlobRef, bytes]] = {}
        self._pending_bytes = 0

    @property
    def pending(self) -> int:
        """Blobs kept and not written yet."""
        return len(self._pending)

    async def put(self, data: bytes) -> BlobRef:
        ref = BlobRef.of(data)
        if ref.sha256 not in self._pending:
            self._pending[ref.sha256] = (ref, data)
            self._pending_bytes += len(data)
            if self._pending_bytes > self._max_pending_bytes:
                await self._write()
        return ref

    async def get(self, ref: BlobRef) -> bytes:
        kept = self._pending.get(ref.sha256)
        if kept is not None and kept[0] == ref:
            return kept[1]
        return await self.store.get(ref)

    async def exists(self, ref: BlobRef) -> bool:
        return ref.sha256 in self._pending or await self.store.exists(ref)

    async def aclose(self) -> None:
        await self.store.aclose()

    async def flush(self) -> None:
        """Write every kept blob and make all written blobs durable; raises the store's
        errors (``BlobStoreUnavailable`` is transient: the transaction aborts and retries)."""
        await self._write()
        if isinstance(self.store, LocalBlobStore):
            await self.store.sync()

    async def _write(self) -> None:
        blobs = list(self._pending.values())
        if not blobs:
            return
        if isinstance(self.store, LocalBlobStore):
            await self.store.put_many(blobs)
        else:
            store, slots = self.store, asyncio.Semaphore(WRITE_CONCURRENCY)

            async def put(data: bytes) -> None:
                async with slots:
                    await store.put(data)

            await asyncio.gather(*(put(data) for _, data in blobs))
        for ref, data in blobs:  # kept until written: a failed write is tried again
            if self._pending.pop(ref.sha256, None) is not None:
                self._pending_bytes -= len(data)
