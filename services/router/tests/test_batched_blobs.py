"""Blob puts of a routing transaction: readable at once, stored in the background, durable
by the flush before the commit; a failed write fails the flush and nothing is lost."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from email_channels.blobstore import (
    BlobRef,
    BlobStoreUnavailable,
    LocalBlobStore,
    MemoryBlobStore,
)
from router import batched_blobs
from router.batched_blobs import BatchedBlobs

if TYPE_CHECKING:
    from pathlib import Path


class FlakyStore(MemoryBlobStore):
    """Our BlobStore protocol over a dict, whose puts fail while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def put(self, data: bytes) -> BlobRef:
        if self.down:
            raise BlobStoreUnavailable("store down")
        return await super().put(data)


async def test_a_put_is_readable_at_once_and_on_disk_and_synced_after_the_flush(
    tmp_path: Path,
) -> None:
    """The reference is known before the write; the flush writes every blob and syncs."""
    store = LocalBlobStore(tmp_path, durability="batch")
    blobs = BatchedBlobs(store)
    ref = await blobs.put(b"raw mime")
    assert ref == BlobRef.of(b"raw mime")
    assert await blobs.get(ref) == b"raw mime"
    assert await blobs.exists(ref)
    await blobs.flush()
    assert blobs.pending == 0
    assert store.path_for(ref).read_bytes() == b"raw mime"
    assert store._unsynced == set()


async def test_many_puts_are_written_while_routing_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a chunk of puts the background writer stores them before any flush."""
    monkeypatch.setattr(batched_blobs, "WRITE_CHUNK", 4)
    store = LocalBlobStore(tmp_path, durability="batch")
    blobs = BatchedBlobs(store)
    refs = [await blobs.put(f"blob {n}".encode()) for n in range(4)]
    await blobs._writer  # type: ignore[misc]
    assert all(store.path_for(ref).is_file() for ref in refs)
    assert blobs.pending == 0


async def test_a_failed_write_fails_the_flush_and_the_retried_batch_stores_the_blob() -> None:
    """The flush raises the store's (transient) error; putting the same bytes again (the
    retried transaction) stores them."""
    store = FlakyStore()
    blobs = BatchedBlobs(store)
    store.down = True
    ref = await blobs.put(b"attachment")
    with pytest.raises(BlobStoreUnavailable):
        await blobs.flush()
    store.down = False
    await blobs.flush()  # the failure was raised once; nothing is left to write
    assert not await store.exists(ref)
    await blobs.put(b"attachment")
    await blobs.flush()
    assert await store.get(ref) == b"attachment"


async def test_memory_is_bounded_by_writing_early() -> None:
    """Past max_pending_bytes a put waits until what is kept is stored."""
    store = MemoryBlobStore()
    blobs = BatchedBlobs(store, max_pending_bytes=10)
    ref = await blobs.put(b"more than ten bytes")
    assert blobs.pending == 0
    assert await store.exists(ref)
