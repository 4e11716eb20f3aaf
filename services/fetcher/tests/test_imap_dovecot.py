"""The IMAP source against a real Dovecot: TLS modes, errors by step, UID sync, after-fetch
actions, IDLE and UIDVALIDITY changes. No Kafka here (see test_fetcher_kafka.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from email_channels.errors import ChannelMisconfigured
from email_channels.events import AfterFetch, FetchCursor, TlsMode
from email_channels.hostpolicy import HostPolicy
from fetcher.sources import Outcome, SourceUnavailable
from fetcher.sources.imap import ImapOptions, ImapSource, ImapSourceFactory
from fetcher.worker import ChannelWorker

if TYPE_CHECKING:
    from collections.abc import Sequence

    from devstack.dovecot import Dovecot
    from email_channels.events import ChannelStatus, DeadLetter, RawEmail
    from email_channels.secretbox import SecretBox

pytestmark = pytest.mark.integration


def mime(subject: str, size: int = 0) -> bytes:
    return (
        f"From: a@example.com\r\nTo: b@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@example.com>\r\n\r\nHello {subject}\r\n"
    ).encode() + b"x" * size


@pytest.fixture
def options(dovecot: Dovecot) -> ImapOptions:
    return ImapOptions(
        command_timeout=10,
        fetch_timeout=30,
        idle_renew=60,
        poll_interval=1,
        ca_file=dovecot.ca_file,
    )


@pytest.fixture
def factory(secret_box: SecretBox, options: ImapOptions) -> ImapSourceFactory:
    return ImapSourceFactory(
        secret_box=secret_box, host_policy=HostPolicy.parse("127.0.0.1"), options=options
    )


async def take_all(source: ImapSource, cursor: FetchCursor) -> tuple[FetchCursor, list[bytes]]:
    pending = await source.pending(cursor)
    cursor = pending.cursor
    if not pending.messages:
        return cursor, []
    fetched = await source.fetch(pending.messages)
    assert all(f.outcome is Outcome.FETCHED for f in fetched), fetched
    bodies = [f.raw for f in fetched if f.raw is not None]
    await source.settle(pending.messages)
    return source.advance(cursor, pending.messages), bodies


@pytest.mark.parametrize("tls", [TlsMode.SSL, TlsMode.STARTTLS, TlsMode.PLAIN])
async def test_every_tls_mode_fetches_the_exact_bytes(
    tls, dovecot, mail_user, imap_channel, opened
):
    raw = mime("tls-" + tls.value)
    dovecot.deliver(mail_user.user, raw)
    source = await opened(imap_channel(mail_user, tls=tls))
    cursor, bodies = await take_all(source, FetchCursor(channel_id="c"))
    assert bodies == [raw]
    assert cursor.folders["INBOX"].last_uid == 1


async def test_wrong_password_is_misconfigured_at_auth(mail_user, imap_channel, opened):
    with pytest.raises(ChannelMisconfigured) as caught:
        await opened(imap_channel(mail_user, password="not-the-password"))
    assert caught.value.step == "auth"
    assert "AUTHENTICATIONFAILED" in str(caught.value)
    assert "not-the-password" not in str(caught.value)


async def test_missing_folder_is_misconfigured_at_folder(mail_user, imap_channel, opened):
    source = await opened(imap_channel(mail_user, folders=["NoSuchFolder"]))
    with pytest.raises(ChannelMisconfigured) as caught:
        await source.pending(FetchCursor(channel_id="c"))
    assert caught.value.step == "folder"


async def test_untrusted_certificate_is_misconfigured_at_tls(
    mail_user, imap_channel, secret_box, options
):
    untrusting = ImapSourceFactory(
        secret_box=secret_box,
        host_policy=HostPolicy.parse("127.0.0.1"),
        options=ImapOptions(command_timeout=10, ca_file=None),
    )
    source = untrusting(imap_channel(mail_user))
    try:
        with pytest.raises(ChannelMisconfigured) as caught:
            await source.open()
    finally:
        await source.close()
    assert caught.value.step == "tls"


async def test_loopback_host_is_refused_without_the_allow_list(
    mail_user, imap_channel, secret_box, options
):
    strict = ImapSourceFactory(secret_box=secret_box, host_policy=HostPolicy(), options=options)
    source = strict(imap_channel(mail_user))
    with pytest.raises(ChannelMisconfigured) as caught:
        await source.open()
    await source.close()
    assert caught.value.step == "dns"


async def test_mark_seen_happens_on_settle_not_on_fetch(
    dovecot, mail_user, imap_channel, opened, mailbox
):
    """BODY.PEEK leaves the message unread; only settle (after the Kafka ack) marks it."""
    dovecot.deliver(mail_user.user, mime("peek"))
    source = await opened(imap_channel(mail_user, after_fetch=AfterFetch.MARK_SEEN))
    pending = await source.pending(FetchCursor(channel_id="c"))
    [fetched] = await source.fetch(pending.messages)
    assert fetched.raw == mime("peek")
    assert "\\Seen" not in (await mailbox(mail_user).flags())[1]

    await source.settle(pending.messages)
    assert "\\Seen" in (await mailbox(mail_user).flags())[1]


async def test_mail_read_by_another_client_is_still_taken(
    dovecot, mail_user, imap_channel, opened, mailbox
):
    dovecot.deliver(mail_user.user, mime("one"))
    source = await opened(imap_channel(mail_user))
    cursor, _ = await take_all(source, FetchCursor(channel_id="c"))
    dovecot.deliver(mail_user.user, mime("two"))
    dovecot.deliver(mail_user.user, mime("three"))
    await source.close()  # another client reads everything meanwhile
    box = mailbox(mail_user)
    assert set((await box.flags()).keys()) == {1, 2, 3}
    source = await opened(imap_channel(mail_user))
    cursor, bodies = await take_all(source, cursor)
    assert bodies == [mime("two"), mime("three")]


async def test_move_and_delete_after_fetch(dovecot, mail_user, imap_channel, opened, mailbox):
    dovecot.create_folder(mail_user.user, "Processed")
    dovecot.deliver(mail_user.user, mime("move-me"))
    source = await opened(
        imap_channel(mail_user, after_fetch=AfterFetch.MOVE, move_to_folder="Processed")
    )
    await take_all(source, FetchCursor(channel_id="c"))
    assert await mailbox(mail_user).flags("INBOX") == {}
    assert len(await mailbox(mail_user).flags("Processed")) == 1
    await source.close()

    dovecot.deliver(mail_user.user, mime("delete-me"))
    source = await opened(imap_channel(mail_user, after_fetch=AfterFetch.DELETE))
    _, bodies = await take_all(source, FetchCursor(channel_id="c"))
    assert bodies == [mime("delete-me")]
    assert await mailbox(mail_user).flags("INBOX") == {}


async def test_move_to_a_missing_folder_is_misconfigured_at_connect(
    dovecot, mail_user, imap_channel, opened
):
    """The move target is looked up at connect: the status names it before any mail is taken."""
    dovecot.deliver(mail_user.user, mime("nowhere"))
    with pytest.raises(ChannelMisconfigured) as caught:
        await opened(imap_channel(mail_user, after_fetch=AfterFetch.MOVE, move_to_folder="Missing"))
    assert caught.value.step == "folder"
    assert "'Missing'" in str(caught.value)


async def test_idle_wakes_up_when_mail_arrives(dovecot, mail_user, imap_channel, opened):
    source = await opened(imap_channel(mail_user))
    cursor, _ = await take_all(source, FetchCursor(channel_id="c"))
    waiting = asyncio.create_task(source.wait_for_news())
    await asyncio.sleep(0.3)
    assert not waiting.done()
    started = time.monotonic()
    await asyncio.to_thread(dovecot.deliver, mail_user.user, mime("pushed"))
    async with asyncio.timeout(10):
        await waiting
    assert time.monotonic() - started < 5  # pushed, not the 60 s IDLE renewal
    _, bodies = await take_all(source, cursor)
    assert bodies == [mime("pushed")]


async def test_large_message_arrives_whole(dovecot, mail_user, imap_channel, opened):
    raw = mime("big", size=3 * 1024 * 1024)
    dovecot.deliver(mail_user.user, raw)
    source = await opened(imap_channel(mail_user))
    _, bodies = await take_all(source, FetchCursor(channel_id="c"))
    assert bodies == [raw]


async def test_uidvalidity_change_takes_the_folder_again_for_a_recheck(
    dovecot, mail_user, imap_channel, opened, mailbox
):
    """Renumbered folder: every message present is offered again, marked for the recheck
    against what was published; mail arriving later is not."""
    dovecot.create_folder(mail_user.user, "Support")
    dovecot.deliver(mail_user.user, mime("s1"), folder="Support")
    dovecot.deliver(mail_user.user, mime("s2"), folder="Support")
    channel = imap_channel(mail_user, folders=["Support"])
    source = await opened(channel)
    cursor, bodies = await take_all(source, FetchCursor(channel_id="c"))
    assert len(bodies) == 2
    old = cursor.folders["Support"]
    await source.close()

    await mailbox(mail_user).recreate("Support")  # renumbered: new UIDVALIDITY
    dovecot.deliver(mail_user.user, mime("restored"), folder="Support")
    source = await opened(channel)
    pending = await source.pending(cursor)
    new = pending.cursor.folders["Support"]
    assert new.uidvalidity != old.uidvalidity
    assert new.last_uid == 0
    assert new.recheck_through == 1
    assert [m.key for m in pending.messages] == sorted(pending.recheck)

    dovecot.deliver(mail_user.user, mime("after"), folder="Support")
    pending = await source.pending(pending.cursor)
    assert len(pending.messages) == 2
    assert len(pending.recheck) == 1  # "after" arrived after the renumbering


async def test_idle_is_renewed_and_the_connection_stays_usable(
    dovecot, mail_user, imap_channel, secret_box, options
):
    renewing = ImapSourceFactory(
        secret_box=secret_box,
        host_policy=HostPolicy.parse("127.0.0.1"),
        options=ImapOptions(command_timeout=10, idle_renew=0.5, ca_file=dovecot.ca_file),
    )
    source = renewing(imap_channel(mail_user))
    await source.open()
    try:
        cursor, _ = await take_all(source, FetchCursor(channel_id="c"))
        for _ in range(3):  # IDLE, DONE after 0.5 s, IDLE again...
            async with asyncio.timeout(5):
                await source.wait_for_news()
        dovecot.deliver(mail_user.user, mime("after-renewals"))
        _, bodies = await take_all(source, cursor)
        assert bodies == [mime("after-renewals")]
    finally:
        await source.close()


async def test_without_idle_it_polls(dovecot, mail_user, imap_channel, secret_box):
    polling = ImapSourceFactory(
        secret_box=secret_box,
        host_policy=HostPolicy.parse("127.0.0.1"),
        options=ImapOptions(use_idle=False, poll_interval=0.3, ca_file=dovecot.ca_file),
    )
    source = polling(imap_channel(mail_user))
    await source.open()
    try:
        await take_all(source, FetchCursor(channel_id="c"))
        started = time.monotonic()
        await source.wait_for_news()
        assert 0.25 <= time.monotonic() - started < 3
    finally:
        await source.close()


async def test_connection_dropped_during_idle_is_transient_and_prompt(
    dovecot, mail_user, imap_channel, opened
):
    """aioimaplib would wait for the IDLE renewal; we notice the lost connection at once."""
    source = await opened(imap_channel(mail_user))
    await take_all(source, FetchCursor(channel_id="c"))
    waiting = asyncio.create_task(source.wait_for_news())
    await asyncio.sleep(0.3)
    await asyncio.to_thread(kick, dovecot, mail_user.user)
    with pytest.raises(SourceUnavailable):
        async with asyncio.timeout(10):
            await waiting


def kick(dovecot: Dovecot, user: str) -> None:
    """Disconnect the user's sessions (as a server restart or an admin would)."""
    doveadm = shutil.which("doveadm", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    assert doveadm is not None
    subprocess.run(
        [doveadm, "-c", str(dovecot.config_file), "kick", user], check=True, capture_output=True
    )


async def test_several_folders_are_synced_and_watched(dovecot, mail_user, imap_channel, opened):
    """IDLE watches the first folder; the others are looked at every poll interval."""
    dovecot.create_folder(mail_user.user, "Support")
    dovecot.deliver(mail_user.user, mime("in-inbox"))
    dovecot.deliver(mail_user.user, mime("in-support"), folder="Support")
    source = await opened(imap_channel(mail_user, folders=["INBOX", "Support"]))
    cursor, bodies = await take_all(source, FetchCursor(channel_id="c"))
    assert bodies == [mime("in-inbox"), mime("in-support")]
    assert set(cursor.folders) == {"INBOX", "Support"}

    started = time.monotonic()
    async with asyncio.timeout(5):
        await source.wait_for_news()  # nothing new: waits for the poll interval (1 s)
    assert time.monotonic() - started >= 0.8

    waiting = asyncio.create_task(source.wait_for_news())
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await asyncio.to_thread(dovecot.deliver, mail_user.user, mime("pushed-inbox"))
    async with asyncio.timeout(5):
        await waiting
    dovecot.deliver(mail_user.user, mime("polled-support"), folder="Support")
    _, bodies = await take_all(source, cursor)
    assert sorted(bodies) == sorted([mime("pushed-inbox"), mime("polled-support")])


async def test_sync_all_folders_takes_receiving_folders_and_ones_created_later(
    dovecot, mail_user, imap_channel, opened
):
    """INBOX, subfolders and Junk are taken; Sent, Drafts and Trash are not; a folder created
    after connecting is picked up at the next sync."""
    dovecot.create_folder(mail_user.user, "Projects/Alpha")
    for folder in ("INBOX", "Junk", "Projects/Alpha", "Sent", "Drafts", "Trash"):
        dovecot.deliver(mail_user.user, mime(f"in-{folder.replace('/', '-')}"), folder=folder)
    source = await opened(imap_channel(mail_user, sync_all_folders=True))
    assert source.folders == ["INBOX", "Junk", "Projects/Alpha"]
    cursor, bodies = await take_all(source, FetchCursor(channel_id="c"))
    assert sorted(bodies) == sorted([mime("in-INBOX"), mime("in-Junk"), mime("in-Projects-Alpha")])
    dovecot.create_folder(mail_user.user, "Later")
    dovecot.deliver(mail_user.user, mime("in-later"), folder="Later")
    _, bodies = await take_all(source, cursor)
    assert bodies == [mime("in-later")]
    assert "Later" in source.folders


async def test_recipient_only_takes_mail_for_the_channel_and_leaves_the_rest_untouched(
    dovecot, mail_user, imap_channel, opened, mailbox
):
    """Decided from the headers (To, Cc, Delivered-To for a Bcc copy) before any body is
    downloaded; mail for someone else keeps its flags and place, even in delete mode."""
    ours = mail_user.address
    dovecot.deliver(mail_user.user, mime("for-someone-else"))
    dovecot.deliver(
        mail_user.user,
        b"From: a@example.com\r\nTo: list@example.test\r\nDelivered-To: "
        + ours.upper().encode()
        + b"\r\nSubject: bcc\r\n\r\nbcc copy\r\n",
    )
    dovecot.deliver(
        mail_user.user, mime("cc").replace(b"Subject:", f"Cc: {ours}\r\nSubject:".encode())
    )
    channel = imap_channel(mail_user, after_fetch=AfterFetch.DELETE)
    channel = channel.model_copy(update={"sync_recipient_only": True})
    source = await opened(channel)
    pending = await source.pending(FetchCursor(channel_id="c"))
    fetched = await source.fetch(pending.messages)
    assert [f.outcome for f in fetched] == [
        Outcome.NOT_FOR_CHANNEL,
        Outcome.FETCHED,
        Outcome.FETCHED,
    ]
    assert fetched[0].raw is None
    await source.settle([f.message for f in fetched if f.outcome is Outcome.FETCHED])
    flags = await mailbox(mail_user).flags()
    assert flags == {1: set()}  # the other mail: still there, not even marked seen


async def test_oversize_message_is_reported_with_its_headers_without_the_body(
    dovecot, mail_user, imap_channel, secret_box, options
):
    """RFC822.SIZE above the limit: the outcome carries the header block, not the body."""
    dovecot.deliver(mail_user.user, mime("huge", size=300_000))
    dovecot.deliver(mail_user.user, mime("small"))
    limited = ImapOptions(**{**options.__dict__, "max_message_bytes": 100_000})
    factory = ImapSourceFactory(
        secret_box=secret_box, host_policy=HostPolicy.parse("127.0.0.1"), options=limited
    )
    source = factory(imap_channel(mail_user))
    await source.open()
    try:
        pending = await source.pending(FetchCursor(channel_id="c"))
        big, small = await source.fetch(pending.messages)
    finally:
        await source.close()
    assert big.outcome is Outcome.OVERSIZE
    assert big.size is not None
    assert big.size > 300_000
    assert b"Message-ID: <huge@example.com>" in (big.headers or b"")
    assert small.raw == mime("small")


async def test_a_batch_of_many_messages_arrives_whole_and_in_order(
    dovecot, mail_user, imap_channel, opened
):
    """One batch of 60 messages of mixed sizes through the linear reader: every byte exact."""
    raws = [mime(f"b{n}", size=(n * 1997) % 60_000) for n in range(60)]
    for raw in raws:
        dovecot.deliver(mail_user.user, raw)
    source = await opened(imap_channel(mail_user))
    _, bodies = await take_all(source, FetchCursor(channel_id="c"))
    assert bodies == raws


class RawEvents:
    """An EventSink that keeps the RawEmails (Kafka is not what this test is about)."""

    def __init__(self, expected: int) -> None:
        self.raw: list[RawEmail] = []
        self.all_in = asyncio.Event()
        self._expected = expected

    async def publish_raw(self, emails: Sequence[RawEmail]) -> None:
        self.raw.extend(emails)
        if len(self.raw) >= self._expected:
            self.all_in.set()

    async def publish_cursor(self, cursor: FetchCursor) -> None:
        return None

    async def publish_status(self, status: ChannelStatus) -> None:
        return None

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        return None


async def test_large_message_streams_to_the_blob_store_in_pieces(
    dovecot, mail_user, imap_channel, secret_box, options, noting_store
):
    """Above the large size a message goes to the blob store in pieces of the chunk size (never
    one whole put); its RawEmail carries the reference and the content is byte for byte."""
    small, big, after = mime("small"), mime("big", size=3 * 1024 * 1024), mime("after")
    for raw in (small, big, after):
        dovecot.deliver(mail_user.user, raw)
    store = noting_store
    streaming = ImapOptions(
        **{**options.__dict__, "large_message_bytes": 256 * 1024, "large_chunk_bytes": 64 * 1024}
    )
    factory = ImapSourceFactory(
        secret_box=secret_box,
        host_policy=HostPolicy.parse("127.0.0.1"),
        options=streaming,
        blobs=store,
    )
    sink = RawEvents(expected=3)
    worker = ChannelWorker(
        imap_channel(mail_user),
        None,
        sources=factory,
        sink=sink,
        blobs=store,
        inline_max_bytes=128 * 1024,
        reported_by="test",
    )
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(30):
            await sink.all_in.wait()
    finally:
        worker.stop()
        await task
    first, streamed, last = sink.raw
    assert (first.raw_mime, last.raw_mime) == (small, after)
    assert streamed.raw_mime is None
    assert streamed.raw_ref is not None
    assert await store.get(streamed.raw_ref) == big
    assert (streamed.size, streamed.sha256) == (len(big), hashlib.sha256(big).hexdigest())
    assert streamed.message_id == "<big@example.com>"
    assert max(store.chunks) <= 64 * 1024
    assert sum(store.chunks) == len(big)
    assert len(store.chunks) >= len(big) // (64 * 1024)
    assert store.puts == []  # nothing went in whole
