"""The blob puts of one routing transaction, written in the background and synced before
it commits.

A routed record names its raw MIME and attachments by reference (:class:`BlobRef`, the
sha256 of the bytes), so the reference is known the moment the bytes are: :meth:`put` hashes
and keeps the bytes; a background writer stores what is kept, many blobs per worker-thread
call for a local store (concurrently for any other store), while the event loop goes on
routing; :meth:`flush` (the routing loop's ``before_commit``) waits for the writer, stores
the rest and makes it all durable (:meth:`LocalBlobStore.sync`, one ``syncfs``). The
transaction commits only after the flush returned, so no committed record names a blob that
is not stored. A write that failed fails the flush (the transaction aborts and is retried,
putting the same bytes again).

Why: one thread hop per blob (two per mail) cost more than the routing itself (event loop
wake-ups and GIL hand-overs, measured with py-spy under ``bench/bench_router.py``); writing
while routing overlaps the file system calls (no GIL) with the routing (Python). Memory is
bounded: past ``max_pending_bytes`` kept or being written, :meth:`put` waits for the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from email_channels.blobstore import BlobRef, LocalBlobStore

if TYPE_CHECKING:
    from email_channels.blobstore import BlobStore

MAX_PENDING_BYTES = 64 * 1024 * 1024
"""Bytes kept or being written before :meth:`BatchedBlobs.put` waits for the writer."""
WRITE_CHUNK = 16
"""Blobs kept before the background writer starts (fewer: the flush writes them)."""
WRITE_CONCURRENCY = 8
"""Puts in flight at once into a store other than the local disk (e.g. S3)."""


class BatchedBlobs:
    """A :class:`~email_channels.blobstore.BlobStore` whose puts are stored in the background
    and made durable by :meth:`flush`."""

    def __init__(self, store: BlobStore, *, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.store = store
        self._max_pending_bytes = max_pending_bytes
        self._kept: dict[str, tuple[BlobRef, bytes]] = {}
        """Put and not stored yet (kept or being written): readable from here."""
        self._queued: list[tuple[BlobRef, bytes]] = []
        self._bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        """A background write that failed: raised by the next :meth:`flush`."""

    @property
    def pending(self) -> int:
        """Blobs put and not stored yet."""
        return len(self._kept)

    async def put(self, data: bytes) -> BlobRef:
        ref = BlobRef.of(data)
        if ref.sha256 not in self._kept:
            self._kept[ref.sha256] = (ref, data)
            self._queued.append((ref, data))
            self._bytes += len(data)
            if self._bytes > self._max_pending_bytes:
                await self._drain()
            elif len(self._queued) >= WRITE_CHUNK:
                self._start_writer()
        return ref

    async def get(self, ref: BlobRef) -> bytes:
        kept = self._kept.get(ref.sha256)
        if kept is not None and kept[0] == ref:
            return kept[1]
        return await self.store.get(ref)

    async def exists(self, ref: BlobRef) -> bool:
        return ref.sha256 in self._kept or await self.store.exists(ref)

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(BaseException):
                await self._writer
        await self.store.aclose()

    async def flush(self) -> None:
        """Store every blob put so far and make it durable; raises the store's errors
        (``BlobStoreUnavailable`` is transient: the transaction aborts and is retried)."""
        await self._drain()
        if isinstance(self.store, LocalBlobStore):
            await self.store.sync()

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued(), name="router-blob-writer")

    async def _drain(self) -> None:
        """Wait until everything put so far is stored; raise the first write error since the
        last drain (the blobs it held were dropped: the retried batch puts them again)."""
        while self._queued or (self._writer is not None and not self._writer.done()):
            self._start_writer()
            assert self._writer is not None
            await asyncio.shield(self._writer)
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def _write_queued(self) -> None:
        while self._queued:
            blobs, self._queued = self._queued, []
            try:
                await self._write(blobs)
            except Exception as exc:  # kept for the next flush to raise
                self._failure = self._failure or exc
            finally:
                for ref, data in blobs:  # stored, or dropped by a failure
                    if self._kept.pop(ref.sha256, None) is not None:
                        self._bytes -= len(data)

    async def _write(self, blobs: list[tuple[BlobRef, bytes]]) -> None:
        if isinstance(self.store, LocalBlobStore):  # each ref made by put() from these bytes
            await self.store.put_many(blobs, verify=False)
            return
        store, slots = self.store, asyncio.Semaphore(WRITE_CONCURRENCY)

        async def put(data: bytes) -> None:
            async with slots:
                await store.put(data)

        await asyncio.gather(*(put(data) for _, data in blobs))
