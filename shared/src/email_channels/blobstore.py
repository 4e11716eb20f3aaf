"""Claim-check blob store: big raw MIME and attachments live here, events carry a BlobRef.

Blobs are content-addressed by sha256, so writing the same bytes twice (a re-fetch, a retry,
two fetchers racing) yields the same reference and stores nothing new. The reference names
the content, not the place: ``blob://sha256/<hex>`` means the same blob in every store, and
where the store lives is deployment configuration (:func:`blob_store_from_url`).

Stores:

- :class:`LocalBlobStore` — a directory, ``root/sha256/ab/cd/<hex>``; the embedded default.
- :class:`S3BlobStore` — any S3-compatible store, key ``<prefix>/sha256/<hex>``.
- :class:`MemoryBlobStore` — a dict, for unit tests of code that takes a :class:`BlobStore`.

Content that should not be held whole in memory (a 20 MB mail downloaded in pieces) goes in
with :func:`put_stream`: the chunks are hashed on the way and written to a temporary file
(local store: then renamed to its content address; S3: then uploaded from the file).

Errors (every store reads and verifies the hash, so a reader never sees wrong bytes)::

    PermanentError
    ├── BlobNotFound            no blob with that hash in this store
    └── BlobCorrupted           stored bytes do not hash to the reference
    TransientError
    └── BlobStoreUnavailable    I/O or network failure, throttling, credentials, missing bucket

A missing bucket or refused credentials is an operator's problem, not the record's: it is
retriable so the consume loop backs off instead of dead-lettering every message meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import os
import stat
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol, Self, get_args
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from email_channels.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable, Sequence
    from types import TracebackType

SHA256_HEX_PATTERN = r"^[0-9a-f]{64}$"
BLOB_URI_PREFIX = "blob://sha256/"

AddressingStyle = Literal["auto", "path", "virtual"]


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class BlobNotFound(PermanentError):
    """The store holds no blob with the reference's hash."""


class BlobCorrupted(PermanentError):
    """The stored bytes do not hash to the reference: never hand them out."""


class BlobStoreUnavailable(TransientError):
    """The store could not be reached or refused the request; try again later."""


class BlobRef(BaseModel):
    """A claim check: which bytes, by their sha256, and how many.

    JSON: ``{"uri": "blob://sha256/<hex>", "sha256": "<hex>", "size": 123}``.
    """

    model_config = ConfigDict(frozen=True)

    uri: str = Field(description="Store-independent name of the content: blob://sha256/<hex>")
    sha256: str = Field(pattern=SHA256_HEX_PATTERN, description="Lower-case hex sha256")
    size: int = Field(ge=0, description="Length in bytes")

    @model_validator(mode="after")
    def _uri_names_the_hash(self) -> Self:
        if self.uri != BLOB_URI_PREFIX + self.sha256:
            raise ValueError(f"uri must be {BLOB_URI_PREFIX}<sha256>, got {self.uri!r}")
        return self

    @classmethod
    def of(cls, data: bytes) -> BlobRef:
        """The reference that ``data`` has in every store."""
        digest = hashlib.sha256(data).hexdigest()
        return cls(uri=BLOB_URI_PREFIX + digest, sha256=digest, size=len(data))


def verified(ref: BlobRef, data: bytes) -> bytes:
    """Return ``data`` if it is exactly the content ``ref`` names, else raise BlobCorrupted."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != ref.sha256 or len(data) != ref.size:
        raise BlobCorrupted(
            f"blob {ref.uri} is corrupted: stored {len(data)} bytes hash to sha256:{actual}"
        )
    return data


class BlobStore(Protocol):
    """Where claim-checked bytes live. Every implementation verifies the hash on read."""

    async def put(self, data: bytes) -> BlobRef:
        """Store ``data`` (idempotent: same bytes, same ref, nothing rewritten)."""
        ...

    async def get(self, ref: BlobRef) -> bytes:
        """The bytes ``ref`` names; BlobNotFound / BlobCorrupted / BlobStoreUnavailable."""
        ...

    async def exists(self, ref: BlobRef) -> bool:
        """Whether the store holds the blob (does not read or verify it)."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store may not be used afterwards."""
        ...


async def put_stream(store: BlobStore, chunks: AsyncIterable[bytes]) -> BlobRef:
    """Store the concatenation of ``chunks`` and return its reference, without joining them
    in memory when the store can stream (:class:`LocalBlobStore`, :class:`S3BlobStore`; any
    other store gets the joined bytes through ``put``)."""
    streaming: Callable[[AsyncIterable[bytes]], Any] | None = getattr(store, "put_stream", None)
    if streaming is not None:
        ref: BlobRef = await streaming(chunks)
        return ref
    return await store.put(b"".join([chunk async for chunk in chunks]))


class _Spool:
    """A temporary file that hashes what is written to it (the writes run in a thread)."""

    def __init__(self, directory: Path | None) -> None:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".incoming.", suffix=".tmp")
        self.path = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "w+b")
        self._hash = hashlib.sha256()
        self.size = 0

    async def fill(self, chunks: AsyncIterable[bytes], *, fsync: bool, where: str) -> BlobRef:
        """Write every chunk; errors of ``chunks`` pass through, the file's own are
        BlobStoreUnavailable (a ConnectionResetError of the source is an OSError too)."""
        async for chunk in chunks:
            try:
                await asyncio.to_thread(self._write, chunk)
            except OSError as exc:
                raise BlobStoreUnavailable(f"cannot write a blob {where}: {exc}") from exc
        try:
            await asyncio.to_thread(self._finish, fsync)
        except OSError as exc:
            raise BlobStoreUnavailable(f"cannot write a blob {where}: {exc}") from exc
        digest = self._hash.hexdigest()
        return BlobRef(uri=BLOB_URI_PREFIX + digest, sha256=digest, size=self.size)

    def _write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.file.write(chunk)
        self.size += len(chunk)

    def _finish(self, fsync: bool) -> None:  # noqa: FBT001 - private, one caller each way
        self.file.flush()
        if fsync:
            os.fsync(self.file.fileno())

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class MemoryBlobStore:
    """A dict-backed :class:`BlobStore` for unit tests. ``blobs`` maps sha256 hex to bytes."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    async def put(self, data: bytes) -> BlobRef:
        ref = BlobRef.of(data)
        self.blobs.setdefault(ref.sha256, bytes(data))
        return ref

    async def get(self, ref: BlobRef) -> bytes:
        try:
            data = self.blobs[ref.sha256]
        except KeyError:
            raise BlobNotFound(f"blob {ref.uri} not found in memory store") from None
        return verified(ref, data)

    async def exists(self, ref: BlobRef) -> bool:
        return ref.sha256 in self.blobs

    async def aclose(self) -> None:
        return None


class LocalBlobStore:
    """Blobs as files under ``root/sha256/ab/cd/<hex>``.

    Writes go to a temporary file in the target directory, are fsync'ed and then renamed
    over the target with :func:`os.replace`, so a reader never sees a partial blob and two
    concurrent puts of the same bytes both succeed with the same result. Files are created
    with mode 0600 (mail content is private).

    ``durability="batch"``: :meth:`put` writes and renames without fsync, and
    :meth:`sync` makes everything put since the last call durable with one ``syncfs`` of the
    store's filesystem (``fsync`` of each file and directory where ``syncfs`` is missing). For
    a caller that commits many puts at once (the router, before each transaction commit): two
    fsyncs per blob cost ~5-10 ms each on ordinary disks.
    """

    def __init__(self, root: Path, *, durability: Literal["each", "batch"] = "each") -> None:
        self.root = Path(root)
        self.durability = durability
        self._blob_root = str(self.root / "sha256")
        self._directories: set[str] = set()
        """Blob directories created or found by this store (no ``mkdir`` per put)."""
        self._unsynced: set[str] = set()
        """Files and directories written since the last :meth:`sync` (``durability="batch"``),
        as strings: hashing a Path per blob showed in profiles."""

    def __repr__(self) -> str:
        return f"LocalBlobStore(root={str(self.root)!r})"

    def path_for(self, ref: BlobRef) -> Path:
        """Where the blob ``ref`` lives (whether or not it exists)."""
        return Path(self._directory_of(ref.sha256), ref.sha256)

    def _directory_of(self, digest: str) -> str:
        """The directory of a blob: two levels of its hash's first hex digits (a string: the
        put path avoids pathlib, see :meth:`_put_sync`)."""
        return os.path.join(self._blob_root, digest[:2], digest[2:4])  # noqa: PTH118

    async def put(self, data: bytes) -> BlobRef:
        ref = BlobRef.of(data)
        await asyncio.to_thread(self._put_sync, ref, data)
        return ref

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> BlobRef:
        """:func:`put_stream`: the chunks go to a temporary file under ``root/incoming``
        (hashed on the way), which is then renamed to its content address."""
        each = self.durability == "each"
        try:
            spool = await asyncio.to_thread(_Spool, self.root / "incoming")
        except OSError as exc:
            raise BlobStoreUnavailable(f"cannot write a blob under {self.root}: {exc}") from exc
        try:
            ref = await spool.fill(chunks, fsync=each, where=f"under {self.root}")
            try:
                spool.file.close()
                await asyncio.to_thread(self._place_sync, ref, spool.path)
            except OSError as exc:
                raise BlobStoreUnavailable(f"cannot write blob {ref.uri}: {exc}") from exc
        finally:
            await asyncio.to_thread(spool.discard)
        return ref

    def _place_sync(self, ref: BlobRef, spooled: Path) -> None:
        target = self.path_for(ref)
        if target.is_file() and target.stat().st_size == ref.size:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        spooled.replace(target)
        if self.durability == "each":
            _fsync_directory(target.parent)
        else:
            self._unsynced.update((str(target), str(target.parent)))

    async def put_many(
        self, blobs: Sequence[tuple[BlobRef, bytes]], *, verify: bool = True
    ) -> None:
        """Store several blobs whose references the caller already holds
        (:meth:`BlobRef.of`), in one worker-thread call instead of one per blob. Each is
        checked against its reference there first (hashing releases the GIL), unless
        ``verify=False``: for a caller that made each reference from the same bytes object
        itself (bytes are immutable, so a second hash can only agree)."""
        if blobs:
            await asyncio.to_thread(self._put_many_sync, blobs, verify)

    async def get(self, ref: BlobRef) -> bytes:
        data = await asyncio.to_thread(self._read_sync, ref)
        return verified(ref, data)

    async def exists(self, ref: BlobRef) -> bool:
        return await asyncio.to_thread(self._exists_sync, ref)

    async def aclose(self) -> None:
        return None

    async def sync(self) -> None:
        """Make every blob put so far durable (a no-op with ``durability="each"``)."""
        if not self._unsynced:
            return
        paths, self._unsynced = self._unsynced, set()
        try:
            await asyncio.to_thread(_sync_filesystem, self.root, paths)
        except OSError as exc:
            self._unsynced |= paths
            raise BlobStoreUnavailable(f"cannot sync blobs under {self.root}: {exc}") from exc

    def _put_sync(self, ref: BlobRef, data: bytes) -> None:
        """Write one blob: a new temporary file in its directory, renamed to its address.

        Plain ``os`` calls and a set of the directories known to exist: the router puts one
        blob per mail, and pathlib, ``mkstemp`` and a ``mkdir`` per put cost more than the
        write (measured: 56 -> ~20 us of Python per blob). A directory removed meanwhile is
        created again.
        """
        digest = ref.sha256
        directory = self._directory_of(digest)
        target = os.path.join(directory, digest)  # noqa: PTH118
        each = self.durability == "each"
        try:
            with contextlib.suppress(FileNotFoundError):
                found = os.stat(target)  # noqa: PTH116 - see docstring
                if stat.S_ISREG(found.st_mode) and found.st_size == ref.size:
                    return
            if directory not in self._directories:
                os.makedirs(directory, exist_ok=True)  # noqa: PTH103
                self._directories.add(directory)
            temporary = os.path.join(directory, f".{digest}.{os.urandom(8).hex()}.tmp")  # noqa: PTH118
            try:
                fd = os.open(temporary, _NEW_FILE, 0o600)
            except FileNotFoundError:  # the directory was removed since
                self._directories.discard(directory)
                os.makedirs(directory, exist_ok=True)  # noqa: PTH103
                self._directories.add(directory)
                fd = os.open(temporary, _NEW_FILE, 0o600)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    if each:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temporary, target)  # noqa: PTH105
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)  # noqa: PTH108
                raise
            if each:
                _fsync_directory(Path(directory))
            else:
                self._unsynced.update((target, directory))
        except OSError as exc:
            raise BlobStoreUnavailable(
                f"cannot write blob {ref.uri} under {self.root}: {exc}"
            ) from exc

    def _put_many_sync(self, blobs: Sequence[tuple[BlobRef, bytes]], verify: bool) -> None:  # noqa: FBT001 - private
        for ref, data in blobs:
            self._put_sync(ref, verified(ref, data) if verify else data)

    def _read_sync(self, ref: BlobRef) -> bytes:
        try:
            return self.path_for(ref).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {ref.uri} not found under {self.root}") from None
        except OSError as exc:
            raise BlobStoreUnavailable(
                f"cannot read blob {ref.uri} under {self.root}: {exc}"
            ) from exc

    def _exists_sync(self, ref: BlobRef) -> bool:
        try:
            return self.path_for(ref).is_file()
        except OSError as exc:
            raise BlobStoreUnavailable(
                f"cannot stat blob {ref.uri} under {self.root}: {exc}"
            ) from exc


def _sync_filesystem(root: Path, paths: set[str]) -> None:
    """One ``syncfs`` of ``root``'s filesystem (Linux); else fsync each of ``paths``."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    syncfs = getattr(libc, "syncfs", None)
    if syncfs is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if syncfs(fd) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, os.strerror(errno))
        finally:
            os.close(fd)
        return
    for path in map(Path, sorted(paths)):
        if path.is_dir():
            _fsync_directory(path)
        else:
            with path.open("rb") as file:
                os.fsync(file.fileno())


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_S3_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def _map_s3_error(exc: Exception, ref: BlobRef, where: str) -> PermanentError | TransientError:
    """The one place botocore/aiohttp failures become pipeline errors."""
    from botocore.exceptions import ClientError  # noqa: PLC0415 - keep botocore off the import path

    if isinstance(exc, ClientError):
        error: dict[str, Any] = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _S3_NOT_FOUND_CODES:
            return BlobNotFound(f"blob {ref.uri} not found at {where}")
        return BlobStoreUnavailable(f"S3 refused blob {ref.uri} at {where}: {code}")
    return BlobStoreUnavailable(
        f"S3 unreachable for blob {ref.uri} at {where}: {type(exc).__name__}"
    )


class S3BlobStore:
    """Blobs as objects ``<prefix>/sha256/<hex>`` in an S3-compatible bucket.

    The client is created on first use and kept; call :meth:`aclose` (or use ``async with``)
    on shutdown. Without ``access_key``/``secret_key`` the standard AWS credential chain is
    used (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profile, web identity on EKS...).
    With an ``endpoint_url`` (MinIO, Ceph...) path-style addressing is the default.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        addressing_style: AddressingStyle | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name is required")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self.addressing_style: AddressingStyle = addressing_style or (
            "path" if endpoint_url else "auto"
        )
        self._client: Any = None
        self._exit_stack = AsyncExitStack()
        self._client_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"endpoint_url={self.endpoint_url!r}, region={self.region!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def key_for(self, ref: BlobRef) -> str:
        """The object key of ``ref`` in the bucket."""
        key = f"sha256/{ref.sha256}"
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(self, data: bytes) -> BlobRef:
        ref = BlobRef.of(data)
        if await self.exists(ref):
            return ref
        await self._upload(ref, data)
        return ref

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> BlobRef:
        """:func:`put_stream`: the chunks are spooled to a temporary file (hashed on the way,
        the key is the hash), then uploaded from it unless the bucket holds them already."""
        try:
            spool = await asyncio.to_thread(_Spool, None)
        except OSError as exc:
            raise BlobStoreUnavailable(f"cannot spool a blob for S3: {exc}") from exc
        try:
            ref = await spool.fill(chunks, fsync=False, where="for S3 (spool file)")
            if not await self.exists(ref):
                await self._upload(ref, spool.file)
        finally:
            await asyncio.to_thread(spool.discard)
        return ref

    async def _upload(self, ref: BlobRef, body: bytes | BinaryIO) -> None:
        key = self.key_for(ref)
        client = await self._get_client()
        if not isinstance(body, bytes):
            body.seek(0)
        try:
            await client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentLength=ref.size,
                ContentType="application/octet-stream",
                Metadata={"sha256": ref.sha256},
            )
        except Exception as exc:
            raise _map_s3_error(exc, ref, self._where(key)) from exc

    async def get(self, ref: BlobRef) -> bytes:
        key = self.key_for(ref)
        client = await self._get_client()
        try:
            response = await client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
        except Exception as exc:
            raise _map_s3_error(exc, ref, self._where(key)) from exc
        return verified(ref, data)

    async def exists(self, ref: BlobRef) -> bool:
        key = self.key_for(ref)
        client = await self._get_client()
        try:
            await client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            error = _map_s3_error(exc, ref, self._where(key))
            if isinstance(error, BlobNotFound):
                return False
            raise error from exc
        return True

    async def aclose(self) -> None:
        async with self._client_lock:
            self._client = None
            await self._exit_stack.aclose()

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                from aiobotocore.config import AioConfig  # noqa: PLC0415 - heavy import, S3 only
                from aiobotocore.session import get_session  # noqa: PLC0415

                config = AioConfig(
                    connect_timeout=10,
                    read_timeout=60,
                    retries={"mode": "standard", "max_attempts": 3},
                    s3={"addressing_style": self.addressing_style},
                )
                try:
                    self._client = await self._exit_stack.enter_async_context(
                        get_session().create_client(
                            "s3",
                            region_name=self.region,
                            endpoint_url=self.endpoint_url,
                            aws_access_key_id=self._access_key,
                            aws_secret_access_key=self._secret_key,
                            config=config,
                        )
                    )
                except Exception as exc:
                    raise BlobStoreUnavailable(
                        f"cannot create S3 client for bucket {self.bucket!r}: {exc}"
                    ) from exc
        return self._client


_S3_QUERY_PARAMS = frozenset({"endpoint_url", "region", "addressing_style"})


def blob_store_from_url(url: str) -> BlobStore:
    """Build the store a URL names.

    - ``/var/lib/email-channels/blobs``, ``./blobs``, ``file:///var/lib/...`` or
      ``file://./var/blobs`` (relative to the working directory) → LocalBlobStore
    - ``s3://bucket/optional/prefix?endpoint_url=http://minio:9000&region=eu-west-1``
      (optional ``addressing_style=path|virtual|auto``) → S3BlobStore; credentials come from
      the standard AWS environment, never from the URL.
    - ``memory://`` → MemoryBlobStore (tests, demos).
    """
    url = url.strip()
    if not url:
        raise ValueError("blob store URL is empty")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "":
        return LocalBlobStore(Path(url).expanduser())
    if scheme == "file":
        return LocalBlobStore(_file_url_path(parts.netloc, parts.path, parts.query))
    if scheme == "s3":
        return _s3_store_from_url(parts.netloc, parts.path, parts.query)
    if scheme == "memory":
        return MemoryBlobStore()
    raise ValueError(f"unsupported blob store URL scheme {parts.scheme!r} (use file, s3 or memory)")


def _file_url_path(netloc: str, path: str, query: str) -> Path:
    """``file:///abs``, ``file://localhost/abs``; also ``file://./rel`` and ``file://~/x``."""
    if query:
        raise ValueError("file blob store URL takes no query parameters")
    if netloc in {".", "..", "~"}:
        return Path(netloc + unquote(path)).expanduser()
    if netloc not in {"", "localhost"}:
        raise ValueError(f"file blob store URL must be local, got host {netloc!r}")
    if not path:
        raise ValueError("file blob store URL has no path")
    return Path(unquote(path)).expanduser()


def _s3_store_from_url(netloc: str, path: str, query: str) -> S3BlobStore:
    if "@" in netloc:
        raise ValueError("s3 blob store URL must not carry credentials; use AWS_* variables")
    if not netloc:
        raise ValueError("s3 blob store URL has no bucket: s3://<bucket>/<prefix>")
    params = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(params) - _S3_QUERY_PARAMS)
    if unknown:
        raise ValueError(
            f"unknown s3 blob store URL parameter(s) {unknown}; known: {sorted(_S3_QUERY_PARAMS)}"
        )

    def single(name: str) -> str | None:
        values = params.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise ValueError(f"s3 blob store URL parameter {name!r} given more than once")
        return values[0] or None

    return S3BlobStore(
        bucket=netloc,
        prefix=unquote(path),
        endpoint_url=single("endpoint_url"),
        region=single("region"),
        addressing_style=_addressing_style(single("addressing_style")),
    )


def _addressing_style(value: str | None) -> AddressingStyle | None:
    match value:
        case None:
            return None
        case "auto" | "path" | "virtual":
            return value
        case _:
            raise ValueError(
                f"addressing_style must be one of {get_args(AddressingStyle)}, got {value!r}"
            )
