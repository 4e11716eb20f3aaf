"""The whole fetcher against real Kafka and a real Dovecot: a channel record on email.channels
makes its mail appear on email.raw, the cursor survives restarts, and a broken channel is
reported inactive without holding up the others."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING

import pytest
from aiokafka.partitioner import DefaultPartitioner

from email_channels.codec import decode
from email_channels.events import (
    AfterFetch,
    ChannelConfig,
    ChannelState,
    ChannelStatus,
    DeadLetter,
    FetchCursor,
    RawEmail,
    status_key,
)
from email_channels.producer import EventProducer
from email_channels.settings import CommonSettings
from fetcher.app import FetcherApp
from fetcher.settings import FetcherSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from devstack.dovecot import Dovecot
    from email_channels.settings import KafkaSettings

pytestmark = pytest.mark.integration


def mime(subject: str, size: int = 0) -> bytes:
    return (
        f"From: customer@example.com\r\nTo: support@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@example.com>\r\n\r\nHello {subject}\r\n"
    ).encode() + b"x" * size


@pytest.fixture
def settings(
    kafka_settings: KafkaSettings, dovecot: Dovecot, secret_keys: str, tmp_path: Path
) -> FetcherSettings:
    return FetcherSettings(
        kafka=kafka_settings,
        common=CommonSettings(
            secret_keys=secret_keys,  # type: ignore[arg-type]
            allowed_hosts="127.0.0.1",
            ca_file=dovecot.ca_file,
            blob_store_url=f"file://{tmp_path}/blobs",
            inline_max_bytes=64 * 1024,
        ),
        instance_id="fetcher-test",
        ensure_topics=False,  # the kafka_settings fixture did it
        poll_interval_s=1,
        retry_first_backoff_s=0.2,
        retry_max_backoff_s=1,
        stop_timeout_s=5,
    )


@contextlib.asynccontextmanager
async def running(settings: FetcherSettings) -> AsyncIterator[asyncio.Task[None]]:
    """One fetcher process (in this event loop); stopped like SIGTERM would stop it."""
    stopping = asyncio.Event()
    task = asyncio.create_task(FetcherApp(settings).run(stopping))
    try:
        yield task
    finally:
        stopping.set()
        async with asyncio.timeout(30):
            await task


@pytest.fixture
async def publish(kafka_settings: KafkaSettings) -> AsyncIterator[Callable[..., object]]:
    """``await publish(config)``: write a channel record as config-api would."""
    async with EventProducer(kafka_settings, client_id="test-config-api") as producer:

        async def write(config: ChannelConfig) -> None:
            await producer.publish(producer.topics.channels, config.id, config)

        yield write


def raw_emails(reader: object) -> list[tuple[str, RawEmail]]:
    return [
        (record.key.decode(), decode(RawEmail, record.value))
        for record in reader.records  # type: ignore[attr-defined]
    ]


def statuses(reader: object, channel_id: str) -> list[ChannelStatus]:
    """The channel's inbound health reports (key ``<channel id>/inbound``), oldest first."""
    return [
        decode(ChannelStatus, record.value)
        for record in reader.records  # type: ignore[attr-defined]
        if record.key.decode() == status_key(channel_id, "inbound")
    ]


async def test_mail_before_and_after_start_reaches_email_raw_and_is_marked_seen(
    settings, kafka_settings, dovecot, mail_user, imap_channel, publish, topic_reader,
    mailbox, wait_until,
):  # fmt: skip
    topics = kafka_settings.topics
    raw = await topic_reader(topics.raw)
    status = await topic_reader(topics.channel_status)
    before, after = mime("before-start"), mime("after-start")
    dovecot.deliver(mail_user.user, before)
    channel = imap_channel(mail_user, after_fetch=AfterFetch.MARK_SEEN)
    await publish(channel)

    async with running(settings):
        await wait_until(lambda: len(raw.records) == 1)
        await wait_until(lambda: statuses(status, channel.id))
        await asyncio.sleep(0.5)  # the worker is waiting in IDLE now
        await asyncio.to_thread(dovecot.deliver, mail_user.user, after)
        await wait_until(lambda: len(raw.records) == 2, timeout=10)
        await wait_until(
            lambda: _all_seen(mailbox(mail_user)),
            timeout=10,
        )

    (key1, first), (key2, second) = raw_emails(raw)
    assert key1 == key2 == channel.id
    assert (first.raw_mime, second.raw_mime) == (before, after)
    assert first.message_id == "<before-start@example.com>"
    assert first.source.folder == "INBOX"
    assert (first.source.uid, second.source.uid) == (1, 2)
    assert first.email_id != second.email_id
    [active] = statuses(status, channel.id)
    assert active.state is ChannelState.ACTIVE
    assert active.direction == "inbound"
    assert active.reported_by == "fetcher-test"


async def _all_seen(box: object) -> bool:
    flags = await box.flags()  # type: ignore[attr-defined]
    return bool(flags) and all("\\Seen" in f for f in flags.values())


async def test_restart_resumes_from_the_cursor_without_republishing(
    settings, kafka_settings, dovecot, mail_user, imap_channel, publish, topic_reader, wait_until
):
    topics = kafka_settings.topics
    raw = await topic_reader(topics.raw)
    cursors = await topic_reader(topics.fetch_cursors)
    channel = imap_channel(mail_user)
    await publish(channel)
    dovecot.deliver(mail_user.user, mime("one"))
    dovecot.deliver(mail_user.user, mime("two"))

    async with running(settings):
        await wait_until(lambda: len(raw.records) == 2)

    dovecot.deliver(mail_user.user, mime("three"))  # while no fetcher runs
    async with running(settings):
        await wait_until(lambda: len(raw.records) == 3)
        await asyncio.sleep(2)  # time enough to (wrongly) publish old mail again

    emails = [email for _, email in raw_emails(raw)]
    assert [email.raw_mime for email in emails] == [mime("one"), mime("two"), mime("three")]
    assert len({email.email_id for email in emails}) == 3
    last = decode(FetchCursor, cursors.records[-1].value)
    assert last.channel_id == channel.id
    assert last.folders["INBOX"].last_uid == 3


async def test_wrong_password_reports_inactive_and_other_channels_keep_flowing(
    settings, kafka_settings, dovecot, mail_user, other_mail_user, imap_channel, publish,
    topic_reader, wait_until,
):  # fmt: skip
    topics = kafka_settings.topics
    raw = await topic_reader(topics.raw)
    status = await topic_reader(topics.channel_status)
    broken = imap_channel(mail_user, password="wrong-password")
    good_user = other_mail_user
    good = imap_channel(good_user)
    await publish(broken)
    await publish(good)
    dovecot.deliver(mail_user.user, mime("stuck"))
    dovecot.deliver(good_user.user, mime("flowing"))

    async with running(settings):
        await wait_until(lambda: statuses(status, broken.id))
        await wait_until(lambda: len(raw.records) == 1)
        await asyncio.to_thread(dovecot.deliver, good_user.user, mime("still-flowing"))
        await wait_until(lambda: len(raw.records) == 2, timeout=10)

    [inactive] = statuses(status, broken.id)
    assert inactive.state is ChannelState.INACTIVE
    assert inactive.step == "auth"
    assert inactive.reason is not None
    assert "wrong-password" not in inactive.reason
    assert {key for key, _ in raw_emails(raw)} == {good.id}
    assert statuses(status, good.id)[0].state is ChannelState.ACTIVE


async def test_config_changes_stop_and_restart_the_channel(
    settings, kafka_settings, dovecot, mail_user, imap_channel, publish, topic_reader, wait_until
):
    raw = await topic_reader(kafka_settings.topics.raw)
    channel = imap_channel(mail_user)
    await publish(channel)
    dovecot.deliver(mail_user.user, mime("first"))

    async with running(settings):
        await wait_until(lambda: len(raw.records) == 1)
        disabled = channel.model_copy(update={"enabled": False, "revision": 2})
        await publish(disabled)
        await asyncio.sleep(2)  # the worker stops
        await asyncio.to_thread(dovecot.deliver, mail_user.user, mime("while-disabled"))
        await asyncio.sleep(2)
        assert len(raw.records) == 1

        await publish(channel.model_copy(update={"enabled": True, "revision": 3}))
        await wait_until(lambda: len(raw.records) == 2)

    assert raw_emails(raw)[1][1].raw_mime == mime("while-disabled")


async def test_large_mail_goes_to_the_blob_store(
    settings, kafka_settings, dovecot, mail_user, imap_channel, publish, topic_reader,
    wait_until, tmp_path,
):  # fmt: skip
    raw = await topic_reader(kafka_settings.topics.raw)
    big = mime("big", size=200 * 1024)
    dovecot.deliver(mail_user.user, big)
    await publish(imap_channel(mail_user))

    async with running(settings):
        await wait_until(lambda: len(raw.records) == 1)

    [(_, email)] = raw_emails(raw)
    assert email.raw_mime is None
    assert email.raw_ref is not None
    assert email.size == len(big)
    stored = [path for path in (tmp_path / "blobs").rglob("*") if path.is_file()]
    assert [path.read_bytes() for path in stored] == [big]


async def test_two_fetchers_split_the_channels_and_take_over_when_one_leaves(
    settings, kafka_settings, dovecot, imap_channel, publish, topic_reader, wait_until, new_user
):
    """Each channel is fetched by exactly one fetcher; a leaving fetcher's channels move."""
    topics = kafka_settings.topics
    raw = await topic_reader(topics.raw)
    status = await topic_reader(topics.channel_status)
    users, channels = [], []
    for partition in range(kafka_settings.partitions):  # one channel on every partition
        user = new_user()
        users.append(user)
        channels.append(imap_channel(user, channel_id=channel_id_on(partition, kafka_settings)))
    for user, channel in zip(users, channels, strict=True):
        await publish(channel)
        dovecot.deliver(user.user, mime(f"first-{channel.id}"))

    first = settings.model_copy(update={"instance_id": "fetcher-a"})
    second = settings.model_copy(update={"instance_id": "fetcher-b"})
    async with running(first):
        async with running(second):
            await wait_until(lambda: len(raw.records) == len(channels), timeout=30)

            def owners() -> set[str]:  # a new owner reports the channel active on its start
                latest = [statuses(status, c.id)[-1:] for c in channels]
                return {s[0].reported_by for s in latest if s}

            await wait_until(lambda: owners() == {"fetcher-a", "fetcher-b"}, timeout=30)
        # fetcher-b left the group: its channels are fetcher-a's now
        for user, channel in zip(users, channels, strict=True):
            await asyncio.to_thread(dovecot.deliver, user.user, mime(f"second-{channel.id}"))
        await wait_until(lambda: len(raw.records) == 2 * len(channels), timeout=30)
        await asyncio.sleep(1)

    emails = raw_emails(raw)
    assert len(emails) == 2 * len(channels)  # nothing fetched twice
    assert len({email.email_id for _, email in emails}) == len(emails)
    for channel in channels:
        mine = [email.raw_mime for key, email in emails if key == channel.id]
        assert mine == [mime(f"first-{channel.id}"), mime(f"second-{channel.id}")]


def channel_id_on(partition: int, kafka_settings: KafkaSettings) -> str:
    """A channel id whose record lands on ``partition`` (the producer's default partitioner)."""
    partitions = list(range(kafka_settings.partitions))
    while True:
        candidate = f"ch-{uuid.uuid4().hex[:8]}"
        if DefaultPartitioner()(candidate.encode(), partitions, partitions) == partition:
            return candidate


def renumber(dovecot: Dovecot, user: str) -> None:
    """What a restore or migration does: Dovecot forgets the folder's UIDs (same messages,
    new UIDVALIDITY and new UIDs)."""
    maildir = dovecot.workdir / "home" / user / "Maildir"
    for path in maildir.iterdir():
        if path.name.startswith(("dovecot-uidlist", "dovecot.index")):
            path.unlink()


@pytest.mark.parametrize("after_fetch", [AfterFetch.MARK_SEEN, AfterFetch.DELETE])
async def test_uidvalidity_change_loses_nothing_and_republishes_nothing(
    after_fetch, settings, kafka_settings, dovecot, mail_user, imap_channel, publish,
    topic_reader, wait_until,
):  # fmt: skip
    """Mail that arrived while the channel was off, then a UIDVALIDITY change: every new
    message is published once, what was published before is not published again."""
    raw = await topic_reader(kafka_settings.topics.raw)
    channel = imap_channel(mail_user, after_fetch=after_fetch)
    await publish(channel)
    dovecot.deliver(mail_user.user, mime("early-1"))
    dovecot.deliver(mail_user.user, mime("early-2"))
    async with running(settings):
        await wait_until(lambda: len(raw.records) == 2)
    for n in range(5):
        dovecot.deliver(mail_user.user, mime(f"while-off-{n}"))
    renumber(dovecot, mail_user.user)
    async with running(settings):
        await wait_until(lambda: len(raw.records) == 7)
        await asyncio.sleep(2)  # time enough to (wrongly) publish the early ones again
    published = [email.raw_mime for _, email in raw_emails(raw)]
    assert sorted(published) == sorted(  # type: ignore[type-var]
        [mime("early-1"), mime("early-2"), *(mime(f"while-off-{n}") for n in range(5))]
    )


async def test_a_failing_settle_is_retried_without_publishing_again(
    settings, kafka_settings, dovecot, mail_user, imap_channel, publish, topic_reader,
    wait_until, mailbox,
):  # fmt: skip
    """The move target is deleted while the channel idles: the next mail is published, its
    MOVE fails (channel inactive, step folder); once the folder is back only the MOVE is
    retried — the mail is on email.raw once."""
    raw = await topic_reader(kafka_settings.topics.raw)
    status = await topic_reader(kafka_settings.topics.channel_status)
    dovecot.create_folder(mail_user.user, "Done")
    channel = imap_channel(mail_user, after_fetch=AfterFetch.MOVE, move_to_folder="Done")
    settings = settings.model_copy(update={"misconfigured_backoff_s": 1.0})
    box = mailbox(mail_user)
    async with running(settings):
        await publish(channel)
        await wait_until(lambda: statuses(status, channel.id))
        await asyncio.to_thread(_delete_folder, box, "Done")
        await asyncio.to_thread(dovecot.deliver, mail_user.user, mime("move-me"))
        await wait_until(lambda: len(raw.records) == 1)
        await wait_until(
            lambda: any(s.state is ChannelState.INACTIVE for s in statuses(status, channel.id))
        )
        await asyncio.sleep(2)  # a few failed sessions: none may publish again
        dovecot.create_folder(mail_user.user, "Done")
        await wait_until(lambda: box._flags("INBOX") == {} and box._flags("Done"), timeout=20)
    assert len(raw.records) == 1
    inactive = [s for s in statuses(status, channel.id) if s.state is ChannelState.INACTIVE]
    assert inactive[0].step == "folder"


def _delete_folder(box: object, name: str) -> None:
    with box._session(None) as imap:  # type: ignore[attr-defined]
        imap.delete(f'"{name}"')


async def test_oversize_message_is_dead_lettered_and_the_next_one_is_fetched(
    settings, kafka_settings, dovecot, mail_user, imap_channel, publish, topic_reader,
    wait_until, mailbox,
):  # fmt: skip
    """Above max_message_bytes: email.dlq gets its identity and headers, it stays on the
    server unseen, and the message after it reaches email.raw."""
    raw = await topic_reader(kafka_settings.topics.raw)
    dlq = await topic_reader(kafka_settings.topics.dlq)
    dovecot.deliver(mail_user.user, mime("too-big", size=50_000))
    dovecot.deliver(mail_user.user, mime("fine"))
    settings = settings.model_copy(update={"max_message_bytes": 20_000})
    async with running(settings):
        await publish(imap_channel(mail_user))
        await wait_until(lambda: len(raw.records) == 1 and len(dlq.records) == 1)
    [(_, email)] = raw_emails(raw)
    assert email.raw_mime == mime("fine")
    letter = decode(DeadLetter, dlq.records[0].value)
    assert letter.error_kind == "oversize"
    assert letter.source is not None
    assert letter.source.uid == 1
    assert b"Message-ID: <too-big@example.com>" in (letter.original_value or b"")
    flags = await mailbox(mail_user).flags()
    assert "\\Seen" not in flags[1]
    assert "\\Seen" in flags[2]


async def test_pop3_channel_delivers_to_email_raw_and_deletes_after_the_ack(
    settings, kafka_settings, dovecot, mail_user, pop3_channel, publish, topic_reader,
    wait_until,
):  # fmt: skip
    """POP3 (delete mode): mail reaches email.raw with its UIDL identity, then leaves the
    server; mail delivered later is taken on the next poll."""
    raw = await topic_reader(kafka_settings.topics.raw)
    dovecot.deliver(mail_user.user, mime("pop-1"))
    channel = pop3_channel(mail_user)
    async with running(settings):
        await publish(channel)
        await wait_until(lambda: len(raw.records) == 1)
        dovecot.deliver(mail_user.user, mime("pop-2"))
        await wait_until(lambda: len(raw.records) == 2, timeout=15)
        await wait_until(lambda: _pop3_count(dovecot, mail_user) == 0, timeout=15)
    emails = [email for _, email in raw_emails(raw)]
    assert [e.raw_mime for e in emails] == [mime("pop-1"), mime("pop-2")]
    assert all(e.source.protocol == "pop3" and e.source.uidl for e in emails)


def _pop3_count(dovecot: Dovecot, user: object) -> int:
    import poplib  # noqa: PLC0415 - a second client, only here

    from email_channels.tls import client_context  # noqa: PLC0415

    context = client_context(extra_ca_file=dovecot.ca_file)
    pop = poplib.POP3_SSL(dovecot.host, dovecot.pop3s_port, context=context, timeout=10)
    try:
        pop.user(user.user)  # type: ignore[attr-defined]
        pop.pass_(user.password)  # type: ignore[attr-defined]
        return int(pop.stat()[0])
    finally:
        pop.quit()
