"""Helpers for the fetcher's integration tests: channels on the devstack Dovecot, a look into
mailboxes with the standard library's imaplib, and reading topics of the test's own prefix."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import secrets
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer

from email_channels.blobstore import LocalBlobStore
from email_channels.events import ChannelConfig, ImapInbound, Pop3Inbound, TlsMode
from email_channels.tls import client_context

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    from aiokafka import ConsumerRecord

    from devstack.dovecot import Dovecot
    from devstack.pytest_plugin import MailUser
    from email_channels.blobstore import BlobRef
    from email_channels.secretbox import SecretBox
    from email_channels.settings import KafkaSettings
    from fetcher.sources import MailSource


class ChunkNotingStore(LocalBlobStore):
    """A local blob store that notes what reaches it: whole puts and streamed chunks."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts: list[int] = []
        self.chunks: list[int] = []

    async def put(self, data: bytes) -> BlobRef:
        self.puts.append(len(data))
        return await super().put(data)

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> BlobRef:
        async def noted() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                self.chunks.append(len(chunk))
                yield chunk

        return await super().put_stream(noted())


@pytest.fixture
async def opened(
    factory: Callable[[ChannelConfig], MailSource],
) -> AsyncIterator[Callable[[ChannelConfig], Awaitable[MailSource]]]:
    """``await opened(channel)``: a source from the test module's ``factory`` fixture, opened;
    every source opened is closed at the end of the test."""
    sources: list[MailSource] = []

    async def open_(channel: ChannelConfig) -> MailSource:
        source = factory(channel)
        sources.append(source)
        await source.open()
        return source

    yield open_
    for source in sources:
        await source.close()


@pytest.fixture
def noting_store(tmp_path: Path) -> ChunkNotingStore:
    """A local blob store in the test's directory that notes whole puts and streamed chunks."""
    return ChunkNotingStore(tmp_path / "blobs")


@pytest.fixture
def new_user(dovecot: Dovecot) -> Callable[[], MailUser]:
    """``new_user()``: one more fresh mailbox user, for tests with several channels."""
    from devstack.pytest_plugin import MailUser  # noqa: PLC0415 - the plugin's own class

    def make() -> MailUser:
        user = MailUser(f"u{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(12))
        dovecot.add_user(user.user, user.password)
        return user

    return make


@pytest.fixture
def other_mail_user(new_user: Callable[[], MailUser]) -> MailUser:
    """A second fresh mailbox user, for tests with two channels."""
    return new_user()


@pytest.fixture
def imap_channel(dovecot: Dovecot, secret_box: SecretBox) -> Callable[..., ChannelConfig]:
    """``imap_channel(mail_user, tls=..., password=..., ...)``: an enabled IMAP channel."""

    def make(
        user: MailUser,
        *,
        tls: TlsMode = TlsMode.SSL,
        password: str | None = None,
        channel_id: str | None = None,
        revision: int = 1,
        enabled: bool = True,
        **inbound: Any,
    ) -> ChannelConfig:
        port = dovecot.imaps_port if tls is TlsMode.SSL else dovecot.imap_port
        settings = ImapInbound(
            host=dovecot.host,
            port=port,
            tls=tls,
            username=user.user,
            password=secret_box.encrypt(user.password if password is None else password),
            **inbound,
        )
        return ChannelConfig(
            id=channel_id or f"ch-{uuid.uuid4().hex[:8]}",
            name=f"Mailbox of {user.user}",
            email_address=user.address,
            default_campaign_id="support",
            enabled=enabled,
            revision=revision,
            inbound=settings,
        )

    return make


@pytest.fixture
def pop3_channel(dovecot: Dovecot, secret_box: SecretBox) -> Callable[..., ChannelConfig]:
    """``pop3_channel(mail_user, tls=..., ...)``: an enabled POP3 channel."""

    def make(
        user: MailUser,
        *,
        tls: TlsMode = TlsMode.SSL,
        password: str | None = None,
        recipient_only: bool = False,
        **inbound: Any,
    ) -> ChannelConfig:
        port = dovecot.pop3s_port if tls is TlsMode.SSL else dovecot.pop3_port
        settings = Pop3Inbound(
            host=dovecot.host,
            port=port,
            tls=tls,
            username=user.user,
            password=secret_box.encrypt(user.password if password is None else password),
            **inbound,
        )
        return ChannelConfig(
            id=f"ch-{uuid.uuid4().hex[:8]}",
            name=f"POP3 mailbox of {user.user}",
            email_address=user.address,
            default_campaign_id="support",
            enabled=True,
            sync_recipient_only=recipient_only,
            inbound=settings,
        )

    return make


class Mailbox:
    """A second client looking into a test mailbox (stdlib imaplib, in a thread)."""

    def __init__(self, dovecot: Dovecot, user: MailUser) -> None:
        self._dovecot = dovecot
        self._user = user

    @contextlib.contextmanager
    def _session(self, folder: str | None = "INBOX") -> Iterator[imaplib.IMAP4_SSL]:
        context = client_context(extra_ca_file=self._dovecot.ca_file)
        imap = imaplib.IMAP4_SSL(
            self._dovecot.host, self._dovecot.imaps_port, ssl_context=context, timeout=10
        )
        try:
            imap.login(self._user.user, self._user.password)
            if folder is not None:
                imap.select(f'"{folder}"')
            yield imap
        finally:
            try:
                imap.logout()  # closes the socket too
            except Exception:
                with contextlib.suppress(OSError):
                    imap.shutdown()

    def _flags(self, folder: str) -> dict[int, set[str]]:
        with self._session(folder) as imap:
            status, data = imap.uid("FETCH", "1:*", "(UID FLAGS)")
            assert status == "OK"
            flags: dict[int, set[str]] = {}
            for item in data:
                if not isinstance(item, bytes):
                    continue
                parsed = imaplib.ParseFlags(item)
                uid = int(item.split(b"UID ")[1].split()[0].rstrip(b")"))
                flags[uid] = {flag.decode() for flag in parsed}
            return flags

    async def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags of every message in ``folder``."""
        return await asyncio.to_thread(self._flags, folder)

    def _recreate(self, folder: str) -> None:
        with self._session(None) as imap:
            assert imap.delete(f'"{folder}"')[0] == "OK"
            assert imap.create(f'"{folder}"')[0] == "OK"

    async def recreate(self, folder: str) -> None:
        """Delete and create ``folder`` again: the server gives it a new UIDVALIDITY."""
        await asyncio.to_thread(self._recreate, folder)


@pytest.fixture
def mailbox(dovecot: Dovecot) -> Callable[[MailUser], Mailbox]:
    return lambda user: Mailbox(dovecot, user)


class TopicReader:
    """Every record of a topic from the beginning, collected as it arrives (no group)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.topic = topic
        self.records: list[ConsumerRecord] = []
        self._consumer = AIOKafkaConsumer(
            **kafka.client_kwargs(),
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe([self.topic])
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.records.extend(records)


@pytest.fixture
async def topic_reader(
    kafka_settings: KafkaSettings,
) -> AsyncIterator[Callable[[str], Any]]:
    """``reader = await topic_reader(topic)``; stopped at the end of the test."""
    readers: list[TopicReader] = []

    async def start(topic: str) -> TopicReader:
        reader = TopicReader(kafka_settings, topic)
        await reader.start()
        readers.append(reader)
        return reader

    yield start
    for reader in readers:
        await reader.stop()
