"""The claim-check blob store: content addressing, integrity, atomic local writes, URLs."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Self

import pytest
from aiobotocore.session import get_session
from aiobotocore.stub import AioStubber
from botocore.stub import ANY
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from email_channels.blobstore import (
    BlobCorrupted,
    BlobNotFound,
    BlobRef,
    BlobStore,
    BlobStoreUnavailable,
    LocalBlobStore,
    MemoryBlobStore,
    S3BlobStore,
    blob_store_from_url,
    put_stream,
)

MIME = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
MIME_SHA = hashlib.sha256(MIME).hexdigest()


# --- BlobRef ---------------------------------------------------------------------------------


def test_ref_names_content_by_sha256_and_size():
    """A ref is blob://sha256/<hex> of the bytes, with their length."""
    ref = BlobRef.of(MIME)
    assert ref.sha256 == MIME_SHA
    assert ref.uri == f"blob://sha256/{MIME_SHA}"
    assert ref.size == len(MIME)


def test_ref_json_round_trip_inside_an_event():
    """A ref embeds in an event model and survives JSON unchanged."""

    class Event(BaseModel):
        raw_ref: BlobRef

    event = Event(raw_ref=BlobRef.of(MIME))
    assert Event.model_validate_json(event.model_dump_json()) == event
    assert event.model_dump(mode="json")["raw_ref"] == {
        "uri": f"blob://sha256/{MIME_SHA}",
        "sha256": MIME_SHA,
        "size": len(MIME),
    }


@pytest.mark.parametrize(
    "sha256",
    ["../../../../etc/passwd", MIME_SHA.upper(), MIME_SHA[:-1], MIME_SHA + "0", ""],
)
def test_ref_rejects_anything_but_lowercase_hex_sha256(sha256: str):
    """A ref from a record cannot point outside the store (no path traversal, no odd names)."""
    with pytest.raises(ValidationError):
        BlobRef(uri=f"blob://sha256/{sha256}", sha256=sha256, size=1)


def test_ref_rejects_uri_that_disagrees_with_hash():
    """The uri and the sha256 field must name the same content."""
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ValidationError, match="uri must be"):
        BlobRef(uri=f"blob://sha256/{other}", sha256=MIME_SHA, size=len(MIME))


def test_ref_is_frozen():
    """A ref is a value: it cannot be changed after creation."""
    ref = BlobRef.of(MIME)
    with pytest.raises(ValidationError):
        ref.size = 1  # type: ignore[misc]


# --- behaviour every store shares ------------------------------------------------------------


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "memory":
        return MemoryBlobStore()
    return LocalBlobStore(tmp_path / "blobs")


async def test_put_then_get_returns_the_bytes(store: BlobStore):
    """What was put comes back byte for byte, under the ref put returned."""
    ref = await store.put(MIME)
    assert ref == BlobRef.of(MIME)
    assert await store.get(ref) == MIME


async def test_same_bytes_same_ref(store: BlobStore):
    """Putting the same content twice is idempotent: same ref, still readable."""
    first = await store.put(MIME)
    second = await store.put(bytes(MIME))
    assert first == second
    assert await store.get(second) == MIME


async def test_empty_blob_round_trips(store: BlobStore):
    """Zero bytes is valid content."""
    ref = await store.put(b"")
    assert ref.size == 0
    assert await store.get(ref) == b""


async def test_exists_reports_presence(store: BlobStore):
    """exists is False before put and True after."""
    ref = BlobRef.of(MIME)
    assert not await store.exists(ref)
    await store.put(MIME)
    assert await store.exists(ref)


async def test_missing_blob_is_permanent_not_found(store: BlobStore):
    """Getting a blob that was never stored raises BlobNotFound, which is not retriable."""
    with pytest.raises(BlobNotFound) as caught:
        await store.get(BlobRef.of(b"never stored"))
    assert caught.value.retriable is False


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=4096))
def test_round_trip_any_bytes_local(data: bytes, tmp_path_factory: pytest.TempPathFactory):
    """Any bytes put into a local store come back identical, under their sha256."""
    store = LocalBlobStore(tmp_path_factory.mktemp("blobs"))

    async def scenario() -> None:
        ref = await store.put(data)
        assert ref.sha256 == hashlib.sha256(data).hexdigest()
        assert await store.get(ref) == data

    asyncio.run(scenario())


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=4096))
def test_round_trip_any_bytes_memory(data: bytes):
    """Any bytes put into the memory store come back identical."""
    store = MemoryBlobStore()

    async def scenario() -> None:
        assert await store.get(await store.put(data)) == data

    asyncio.run(scenario())


# --- LocalBlobStore --------------------------------------------------------------------------


def _files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


async def test_local_layout_is_sha256_fanned_out(tmp_path: Path):
    """Blobs live at root/sha256/ab/cd/<hex>, and nothing else is left behind."""
    store = LocalBlobStore(tmp_path)
    ref = await store.put(MIME)
    expected = tmp_path / "sha256" / MIME_SHA[:2] / MIME_SHA[2:4] / MIME_SHA
    assert store.path_for(ref) == expected
    assert expected.read_bytes() == MIME
    assert _files(tmp_path) == [expected]


async def test_local_concurrent_identical_puts_are_idempotent(tmp_path: Path):
    """Many racing puts of the same bytes all succeed, leaving one intact file, no temp files."""
    store = LocalBlobStore(tmp_path)
    data = b"x" * 1_000_000
    refs = await asyncio.gather(*(store.put(data) for _ in range(16)))
    assert len(set(refs)) == 1
    assert await store.get(refs[0]) == data
    assert [p.name for p in _files(tmp_path)] == [refs[0].sha256]


async def test_local_tampered_file_is_detected(tmp_path: Path):
    """If the file on disk changes, get raises BlobCorrupted (permanent) instead of bad bytes."""
    store = LocalBlobStore(tmp_path)
    ref = await store.put(MIME)
    store.path_for(ref).write_bytes(MIME.replace(b"hi", b"HI"))
    with pytest.raises(BlobCorrupted, match=ref.uri) as caught:
        await store.get(ref)
    assert caught.value.retriable is False


async def test_local_truncated_file_is_repaired_by_next_put(tmp_path: Path):
    """A put over a damaged copy (wrong size) rewrites it, so the blob is readable again."""
    store = LocalBlobStore(tmp_path)
    ref = await store.put(MIME)
    store.path_for(ref).write_bytes(MIME[:5])
    with pytest.raises(BlobCorrupted):
        await store.get(ref)
    await store.put(MIME)
    assert await store.get(ref) == MIME


async def test_local_unwritable_root_is_transient(tmp_path: Path):
    """An I/O failure (here: the root is a file) is BlobStoreUnavailable, which is retriable."""
    root = tmp_path / "not-a-directory"
    root.write_bytes(b"")
    store = LocalBlobStore(root)
    with pytest.raises(BlobStoreUnavailable) as caught:
        await store.put(MIME)
    assert caught.value.retriable is True


async def test_memory_store_verifies_hash_too():
    """The memory fake behaves like the real stores: corrupted content is refused."""
    store = MemoryBlobStore()
    ref = await store.put(MIME)
    store.blobs[ref.sha256] = b"tampered"
    with pytest.raises(BlobCorrupted):
        await store.get(ref)


# --- S3BlobStore (no S3 server here: key naming, and the flow against botocore's stubber) ----


def test_s3_key_has_prefix_then_sha256():
    """Objects are named <prefix>/sha256/<hex>; slashes around the prefix do not matter."""
    ref = BlobRef.of(MIME)
    assert S3BlobStore("mail", "/prod/blobs/").key_for(ref) == f"prod/blobs/sha256/{MIME_SHA}"
    assert S3BlobStore("mail", "prod").key_for(ref) == f"prod/sha256/{MIME_SHA}"
    assert S3BlobStore("mail").key_for(ref) == f"sha256/{MIME_SHA}"


def test_s3_uses_path_style_for_custom_endpoints():
    """S3-compatible servers (MinIO, Ceph) get path-style addressing unless told otherwise."""
    assert S3BlobStore("b", endpoint_url="http://minio:9000").addressing_style == "path"
    assert S3BlobStore("b").addressing_style == "auto"
    assert S3BlobStore("b", addressing_style="virtual").addressing_style == "virtual"


def test_s3_repr_hides_credentials():
    """The store's repr (which may be logged) never shows the access or secret key."""
    store = S3BlobStore("b", access_key="AKIAEXAMPLE", secret_key="s3cr3t-value")
    assert "AKIAEXAMPLE" not in repr(store)
    assert "s3cr3t-value" not in repr(store)


class _Body:
    """What aiobotocore hands back as get_object's Body: an async context manager with read()."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self) -> bytes:
        return self._data

    def readable(self) -> bool:  # botocore's response validator checks for a file-like
        return True


@pytest.fixture
async def s3_stubbed():
    store = S3BlobStore("mail", "prod", region="us-east-1", access_key="test", secret_key="test")
    async with get_session().create_client(
        "s3", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    ) as client:
        store._client = client
        with AioStubber(client) as stubber:
            yield store, stubber
            stubber.assert_no_pending_responses()


async def test_s3_put_uploads_when_absent(s3_stubbed):
    """put checks with head_object, and uploads under the content key when it is missing."""
    store, stubber = s3_stubbed
    key = f"prod/sha256/{MIME_SHA}"
    stubber.add_client_error("head_object", "404", http_status_code=404)
    stubber.add_response(
        "put_object",
        {},
        {
            "Bucket": "mail",
            "Key": key,
            "Body": MIME,
            "ContentLength": len(MIME),
            "ContentType": "application/octet-stream",
            "Metadata": {"sha256": MIME_SHA},
        },
    )
    assert await store.put(MIME) == BlobRef.of(MIME)


async def test_s3_put_skips_upload_when_present(s3_stubbed):
    """put of content the bucket already holds does not upload it again."""
    store, stubber = s3_stubbed
    stubber.add_response(
        "head_object",
        {"ContentLength": len(MIME)},
        {"Bucket": "mail", "Key": f"prod/sha256/{MIME_SHA}"},
    )
    assert await store.put(MIME) == BlobRef.of(MIME)


async def test_s3_get_verifies_hash(s3_stubbed):
    """get returns verified bytes, and refuses an object whose content does not match."""
    store, stubber = s3_stubbed
    ref = BlobRef.of(MIME)
    stubber.add_response("get_object", {"Body": _Body(MIME)})
    assert await store.get(ref) == MIME
    stubber.add_response("get_object", {"Body": _Body(b"tampered")})
    with pytest.raises(BlobCorrupted):
        await store.get(ref)


async def test_s3_errors_map_to_pipeline_errors(s3_stubbed):
    """NoSuchKey is BlobNotFound (permanent); throttling or denial is retriable."""
    store, stubber = s3_stubbed
    ref = BlobRef.of(MIME)
    stubber.add_client_error("get_object", "NoSuchKey", http_status_code=404)
    with pytest.raises(BlobNotFound):
        await store.get(ref)
    stubber.add_client_error("get_object", "SlowDown", http_status_code=503)
    with pytest.raises(BlobStoreUnavailable, match="SlowDown") as caught:
        await store.get(ref)
    assert caught.value.retriable is True
    stubber.add_client_error("head_object", "403", http_status_code=403)
    with pytest.raises(BlobStoreUnavailable):
        await store.exists(ref)


# --- blob_store_from_url ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/var/lib/blobs", Path("/var/lib/blobs")),
        ("relative/blobs", Path("relative/blobs")),
        ("file:///var/lib/blobs", Path("/var/lib/blobs")),
        ("file://localhost/var/lib/blobs", Path("/var/lib/blobs")),
        ("file://./var/blobs", Path("./var/blobs")),
        ("file:///srv/with%20space", Path("/srv/with space")),
    ],
)
def test_url_for_local_store(url: str, expected: Path):
    """Paths and file URLs (absolute, or file://./relative) build a LocalBlobStore there."""
    store = blob_store_from_url(url)
    assert isinstance(store, LocalBlobStore)
    assert store.root == expected


def test_url_for_s3_store():
    """s3://bucket/prefix?endpoint_url=...&region=... builds an S3BlobStore with those settings."""
    store = blob_store_from_url(
        "s3://mail-blobs/prod/raw?endpoint_url=http://minio:9000&region=eu-west-1"
    )
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == ("mail-blobs", "prod/raw")
    assert (store.endpoint_url, store.region) == ("http://minio:9000", "eu-west-1")
    assert store.key_for(BlobRef.of(MIME)) == f"prod/raw/sha256/{MIME_SHA}"


def test_url_for_s3_store_without_options():
    """A bare s3://bucket uses AWS defaults: no endpoint, no region, no prefix."""
    store = blob_store_from_url("s3://mail-blobs")
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix, store.endpoint_url, store.region) == (
        "mail-blobs",
        "",
        None,
        None,
    )


def test_url_for_memory_store():
    """memory:// builds a fresh in-memory store (tests, demos)."""
    assert isinstance(blob_store_from_url("memory://"), MemoryBlobStore)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("ftp://host/blobs", "unsupported"),
        ("file://otherhost/blobs", "must be local"),
        ("s3://", "no bucket"),
        ("s3://key:secret@bucket/prefix", "must not carry credentials"),
        ("s3://bucket/p?endpiont_url=http://x", "unknown s3"),
        ("s3://bucket/p?region=a&region=b", "more than once"),
        ("s3://bucket/p?addressing_style=sideways", "addressing_style"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(url: str, message: str):
    """A wrong blob store URL fails at start-up with a message naming the problem."""
    with pytest.raises(ValueError, match=message):
        blob_store_from_url(url)


async def test_local_batch_durability_syncs_all_puts_at_once(tmp_path: Path):
    """durability="batch": puts are readable at once and pending until one sync() covers them
    all; the default store syncs each put itself and has nothing pending."""
    store = LocalBlobStore(tmp_path, durability="batch")
    first, second = await store.put(MIME), await store.put(b"second blob")
    assert await store.get(first) == MIME
    assert str(store.path_for(second)) in store._unsynced
    await store.sync()
    assert store._unsynced == set()
    each = LocalBlobStore(tmp_path / "each")
    await each.put(MIME)
    assert each._unsynced == set()


async def test_local_put_recreates_a_blob_directory_removed_meanwhile(tmp_path: Path):
    """The store remembers the directories it made; one removed behind its back (a clean-up)
    is made again by the next put there, which stores the blob."""
    store = LocalBlobStore(tmp_path)
    ref = await store.put(MIME)
    shutil.rmtree(tmp_path / "sha256")
    assert await store.put(MIME) == ref
    assert await store.get(ref) == MIME


async def test_local_batch_sync_failure_is_transient_and_keeps_the_blobs_pending(tmp_path: Path):
    """A sync that cannot run raises BlobStoreUnavailable and leaves the puts for the next."""
    store = LocalBlobStore(tmp_path / "root", durability="batch")
    ref = await store.put(MIME)
    shutil.rmtree(tmp_path / "root")
    with pytest.raises(BlobStoreUnavailable):
        await store.sync()
    assert str(store.path_for(ref)) in store._unsynced


# --- streaming puts --------------------------------------------------------------------------


async def _pieces(data: bytes, size: int):
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("kind", ["memory", "local"])
async def test_streamed_put_is_the_same_blob_as_a_whole_put(kind: str, tmp_path: Path):
    """Chunks streamed in give the ref and the bytes of the whole content; no temp file stays."""
    store = MemoryBlobStore() if kind == "memory" else LocalBlobStore(tmp_path)
    data = bytes(range(256)) * 1000
    ref = await put_stream(store, _pieces(data, 4096))
    assert ref == BlobRef.of(data)
    assert await store.get(ref) == data
    assert await put_stream(store, _pieces(data, 1000)) == ref  # idempotent
    if kind == "local":
        assert list((tmp_path / "incoming").iterdir()) == []


async def test_streamed_put_that_fails_midway_leaves_nothing(tmp_path: Path):
    """A source that fails after some chunks leaves no blob and no temporary file."""
    store = LocalBlobStore(tmp_path)

    async def broken():
        yield b"x" * 1000
        raise ConnectionResetError("mail server went away")

    with pytest.raises(ConnectionResetError):
        await put_stream(store, broken())
    assert list((tmp_path / "incoming").iterdir()) == []
    assert not (tmp_path / "sha256").exists()


async def test_s3_streamed_put_uploads_the_spooled_file_under_its_hash(s3_stubbed):
    """S3: the chunks are hashed on the way and uploaded under the content key."""
    store, stubber = s3_stubbed
    stubber.add_client_error("head_object", "404", http_status_code=404)
    stubber.add_response(
        "put_object",
        {},
        {
            "Bucket": "mail",
            "Key": f"prod/sha256/{MIME_SHA}",
            "Body": ANY,
            "ContentLength": len(MIME),
            "ContentType": "application/octet-stream",
            "Metadata": {"sha256": MIME_SHA},
        },
    )
    assert await put_stream(store, _pieces(MIME, 7)) == BlobRef.of(MIME)


async def test_local_put_many_stores_each_blob_and_refuses_bytes_that_are_not_the_ref(
    tmp_path: Path,
):
    """put_many writes every (ref, bytes) pair in one call; bytes that do not hash to their
    reference are refused (BlobCorrupted), never stored under a wrong name."""
    store = LocalBlobStore(tmp_path)
    second = b"second blob"
    await store.put_many([(BlobRef.of(MIME), MIME), (BlobRef.of(second), second)])
    assert await store.get(BlobRef.of(MIME)) == MIME
    assert await store.get(BlobRef.of(second)) == second
    wrong = BlobRef.of(b"other bytes")
    with pytest.raises(BlobCorrupted):
        await store.put_many([(wrong, b"not those bytes")])
    assert not store.path_for(wrong).exists()
