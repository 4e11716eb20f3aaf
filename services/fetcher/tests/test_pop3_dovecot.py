"""The POP3 source against a real Dovecot: TLS modes, errors, DELE only after settle and
committed by QUIT, leave on server, recipient-only with TOP, size limit. No Kafka here."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from email_channels.errors import ChannelMisconfigured
from email_channels.events import AfterFetch, ChannelConfig, FetchCursor, TlsMode
from email_channels.hostpolicy import HostPolicy
from email_channels.validation import StepRecorder
from fetcher.probe import probe_inbound
from fetcher.sources import Outcome
from fetcher.sources.pop3 import Pop3Options, Pop3Source, Pop3SourceFactory

if TYPE_CHECKING:
    from devstack.dovecot import Dovecot
    from email_channels.secretbox import SecretBox

pytestmark = pytest.mark.integration


def mime(subject: str, *, to: str = "b@example.test", size: int = 0) -> bytes:
    return (
        f"From: a@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@example.com>\r\n\r\nHello {subject}\r\n.dot-stuffed line\r\n"
    ).encode() + b"x" * size


@pytest.fixture
def factory(secret_box: SecretBox, dovecot: Dovecot) -> Pop3SourceFactory:
    options = Pop3Options(
        command_timeout=10,
        fetch_timeout=30,
        poll_interval=1,
        ca_file=dovecot.ca_file,
        max_message_bytes=100_000,
    )
    return Pop3SourceFactory(
        secret_box=secret_box, host_policy=HostPolicy.parse("127.0.0.1"), options=options
    )


async def take_all(source: Pop3Source, cursor: FetchCursor) -> tuple[FetchCursor, list[bytes]]:
    pending = await source.pending(cursor)
    if not pending.messages:
        return pending.cursor, []
    fetched = await source.fetch(pending.messages)
    assert all(f.outcome is Outcome.FETCHED for f in fetched), fetched
    await source.settle(pending.messages)
    return source.advance(pending.cursor, pending.messages), [f.raw or b"" for f in fetched]


async def on_server(factory: Pop3SourceFactory, channel: ChannelConfig) -> int:
    source = factory(channel)
    await source.open()
    try:
        return len((await source.pending(FetchCursor(channel_id="x"))).messages)
    finally:
        await source.close()


@pytest.mark.parametrize("tls", [TlsMode.SSL, TlsMode.STARTTLS, TlsMode.PLAIN])
async def test_every_tls_mode_fetches_the_exact_bytes_in_order(
    tls, dovecot, mail_user, pop3_channel, opened
):
    """POP3S, STLS and plain: byte-exact, dot-stuffing undone, in delivery order."""
    for n in range(3):
        dovecot.deliver(mail_user.user, mime(f"m{n}"))
    source = await opened(pop3_channel(mail_user, tls=tls))
    _, bodies = await take_all(source, FetchCursor(channel_id="c"))
    assert bodies == [mime(f"m{n}") for n in range(3)]


async def test_wrong_password_is_misconfigured_at_auth(mail_user, pop3_channel, opened):
    """-ERR [AUTH] on PASS: the channel needs a human, step auth."""
    with pytest.raises(ChannelMisconfigured) as caught:
        await opened(pop3_channel(mail_user, password="wrong"))
    assert caught.value.step == "auth"


async def test_delete_mode_deletes_only_on_settle_and_quit_commits(
    dovecot, mail_user, pop3_channel, opened, factory
):
    """Fetching deletes nothing; settle sends DELE + QUIT and the mail is gone."""
    dovecot.deliver(mail_user.user, mime("one"))
    channel = pop3_channel(mail_user, after_fetch=AfterFetch.DELETE)
    source = await opened(channel)
    pending = await source.pending(FetchCursor(channel_id="c"))
    await source.fetch(pending.messages)
    assert await on_server(factory, channel) == 1
    await source.settle(pending.messages)
    assert await on_server(factory, channel) == 0
    cursor = source.advance(pending.cursor, pending.messages)
    assert (await source.pending(cursor)).cursor.uidls == []  # gone: forgotten


async def test_dele_without_quit_loses_nothing(dovecot, mail_user, pop3_channel, opened, factory):
    """A crash after DELE but before QUIT: the server keeps the mail, it is offered again."""
    dovecot.deliver(mail_user.user, mime("kept"))
    channel = pop3_channel(mail_user, after_fetch=AfterFetch.DELETE)
    source = await opened(channel)
    await source.pending(FetchCursor(channel_id="c"))
    protocol = source._protocol
    assert protocol is not None
    assert (await protocol.send("DELE 1"))[0].startswith("+OK")
    assert protocol.transport is not None
    protocol.transport.abort()  # no QUIT: as if the process died here
    await asyncio.sleep(0.2)
    assert await on_server(factory, channel) == 1


async def test_leave_on_server_takes_each_message_once(
    dovecot, mail_user, pop3_channel, opened, factory
):
    """mark_seen = leave on server: nothing deleted; the UIDL cursor skips what was taken."""
    dovecot.deliver(mail_user.user, mime("first"))
    channel = pop3_channel(mail_user, after_fetch=AfterFetch.MARK_SEEN)
    source = await opened(channel)
    cursor, bodies = await take_all(source, FetchCursor(channel_id="c"))
    assert bodies == [mime("first")]
    await source.close()
    dovecot.deliver(mail_user.user, mime("second"))
    source = await opened(channel)
    cursor, bodies = await take_all(source, cursor)
    assert bodies == [mime("second")]
    assert await on_server(factory, channel) == 2
    assert len(cursor.uidls or []) == 2


async def test_recipient_only_leaves_other_mail_untouched(
    dovecot, mail_user, pop3_channel, opened, factory
):
    """TOP decides before RETR; mail for someone else is neither taken nor deleted."""
    dovecot.deliver(mail_user.user, mime("other", to="someone@example.test"))
    dovecot.deliver(mail_user.user, mime("ours", to=mail_user.address))
    channel = pop3_channel(mail_user, after_fetch=AfterFetch.DELETE, recipient_only=True)
    source = await opened(channel)
    pending = await source.pending(FetchCursor(channel_id="c"))
    fetched = await source.fetch(pending.messages)
    assert [f.outcome for f in fetched] == [Outcome.NOT_FOR_CHANNEL, Outcome.FETCHED]
    assert fetched[1].raw == mime("ours", to=mail_user.address)
    await source.settle([f.message for f in fetched if f.outcome is Outcome.FETCHED])
    assert await on_server(factory, channel) == 1  # the other one is still there


async def test_oversize_message_gives_its_headers_and_the_next_is_fetched(
    dovecot, mail_user, pop3_channel, opened
):
    """Above max_message_bytes (LIST size): no RETR, TOP headers for the dead letter."""
    dovecot.deliver(mail_user.user, mime("huge", size=200_000))
    dovecot.deliver(mail_user.user, mime("small"))
    source = await opened(pop3_channel(mail_user))
    pending = await source.pending(FetchCursor(channel_id="c"))
    big, small = await source.fetch(pending.messages)
    assert big.outcome is Outcome.OVERSIZE
    assert big.raw is None
    assert b"Message-ID: <huge@example.com>" in (big.headers or b"")
    assert small.raw == mime("small")


async def test_a_pipelined_batch_of_many_messages_arrives_whole(
    dovecot, mail_user, pop3_channel, opened
):
    """60 messages in one pipelined round: every body exact and in order (mail ends with a
    line break: POP3 cannot carry a last line without one, RFC 1939 §3)."""
    raws = [mime(f"p{n}", size=n * 500) + b"\r\n" for n in range(60)]
    for raw in raws:
        dovecot.deliver(mail_user.user, raw)
    source = await opened(pop3_channel(mail_user))
    _, bodies = await take_all(source, FetchCursor(channel_id="c"))
    assert bodies == raws


async def test_validate_probe_logs_in_and_lists_the_maildrop_without_touching_it(
    dovecot, mail_user, pop3_channel, factory, secret_box
):
    """config-api's Validate for POP3 settings: dns, login, maildrop all pass, and the mail is
    still on the server afterwards (the probe retrieves and deletes nothing)."""
    dovecot.deliver(mail_user.user, mime("kept"))
    channel = pop3_channel(mail_user, tls=TlsMode.STARTTLS, after_fetch=AfterFetch.DELETE)
    recorder = StepRecorder("inbound", "pop3")
    await probe_inbound(
        channel,
        recorder,
        secret_box=secret_box,
        host_policy=HostPolicy.parse("127.0.0.1"),
        ca_file=dovecot.ca_file,
        command_timeout_s=10,
    )
    report = recorder.report()
    assert [(s.name, s.ok) for s in report.steps] == [
        ("dns", True),
        ("login", True),
        ("maildrop", True),
    ]
    assert await on_server(factory, channel) == 1


async def test_validate_probe_names_the_auth_step_for_a_wrong_password(
    mail_user, pop3_channel, secret_box, dovecot
):
    """A refused PASS fails the probe at step auth (the fetcher's own error mapping)."""
    recorder = StepRecorder("inbound", "pop3")
    with pytest.raises(ChannelMisconfigured):
        await probe_inbound(
            pop3_channel(mail_user, password="wrong"),
            recorder,
            secret_box=secret_box,
            host_policy=HostPolicy.parse("127.0.0.1"),
            ca_file=dovecot.ca_file,
            command_timeout_s=10,
        )
    assert [(s.name, s.ok) for s in recorder.report().steps] == [("dns", True), ("auth", False)]


async def test_large_message_streams_to_the_blob_store_in_pieces(
    dovecot, mail_user, pop3_channel, secret_box, noting_store
):
    """Above the large size RETR is read in pieces of the chunk size into the blob store (never
    one whole put): content byte for byte, dot-stuffing undone; small mail stays inline."""
    line = b"." + b"y" * 75 + b"\r\n"  # every line dot-stuffed on the wire
    big = mime("big") + line * (3 * 1024 * 1024 // len(line))
    small = mime("small") + b"\r\n"
    for raw in (big, small):
        dovecot.deliver(mail_user.user, raw)
    options = Pop3Options(
        command_timeout=10,
        fetch_timeout=30,
        ca_file=dovecot.ca_file,
        large_message_bytes=256 * 1024,
        large_chunk_bytes=64 * 1024,
    )
    factory = Pop3SourceFactory(
        secret_box=secret_box,
        host_policy=HostPolicy.parse("127.0.0.1"),
        options=options,
        blobs=noting_store,
    )
    source = factory(pop3_channel(mail_user))
    await source.open()
    try:
        pending = await source.pending(FetchCursor(channel_id="c"))
        streamed, inline = await source.fetch(pending.messages)
    finally:
        await source.close()
    assert streamed.outcome is Outcome.FETCHED
    assert streamed.raw is None
    assert streamed.stored is not None
    assert await noting_store.get(streamed.stored.ref) == big
    assert streamed.stored.message_id == "<big@example.com>"
    assert inline.raw == small
    assert max(noting_store.chunks) <= 64 * 1024
    assert sum(noting_store.chunks) == len(big)
    assert noting_store.puts == []
