"""The Graph source against the local HTTPS identity/Graph stand-in, with the real msal.

The fast tests drive a :class:`ChannelWorker` with a recording sink (our own EventSink
protocol); the last ones run the whole fetcher against real Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from devstack.graph import AppRegistration, read_form_post
from email_channels.blobstore import MemoryBlobStore
from email_channels.codec import decode
from email_channels.errors import ChannelMisconfigured
from email_channels.events import (
    AfterFetch,
    ChannelConfig,
    ChannelState,
    ChannelStatus,
    DeadLetter,
    FetchCursor,
    GraphAuth,
    GraphInbound,
    RawEmail,
    status_key,
    utcnow,
)
from email_channels.graph_auth import GraphTokens
from email_channels.hostpolicy import HostPolicy, HostRefused
from email_channels.producer import EventProducer
from email_channels.settings import CommonSettings
from email_channels.tls import client_context
from fetcher.app import FetcherApp
from fetcher.recipients import addressed_to
from fetcher.settings import FetcherSettings
from fetcher.sources import Outcome
from fetcher.sources.graph import GraphOptions, GraphSourceFactory
from fetcher.worker import ChannelWorker, WorkerPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from pathlib import Path

    from devstack.certs import TestPki
    from devstack.graph import LocalGraph
    from email_channels.secretbox import EncryptedSecret, SecretBox
    from email_channels.settings import KafkaSettings

MAILBOX = "support@contoso.test"
REDIRECT = "https://config.example.test/api/v1/oauth/callback"
FAST = WorkerPolicy(first_backoff=0.05, max_backoff=0.1, misconfigured_backoff=0.2)


def mime(n: int, *, to: str = MAILBOX) -> bytes:
    return (
        f"From: customer@example.com\r\nTo: {to}\r\nSubject: graph {n}\r\n"
        f"Message-ID: <g{n}@example.com>\r\n\r\nHello {n}\r\n"
    ).encode()


class RecordingSink:
    """An EventSink that keeps what it was given."""

    def __init__(self) -> None:
        self.raw: list[RawEmail] = []
        self.cursors: list[FetchCursor] = []
        self.statuses: list[ChannelStatus] = []
        self.dead_letters: list[DeadLetter] = []

    async def publish_raw(self, emails: Sequence[RawEmail]) -> None:
        self.raw.extend(emails)

    async def publish_cursor(self, cursor: FetchCursor) -> None:
        self.cursors.append(cursor)

    async def publish_status(self, status: ChannelStatus) -> None:
        self.statuses.append(status)

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters.append(letter)


@pytest.fixture
def tenant(local_graph: LocalGraph) -> AppRegistration:
    app = local_graph.register_app(
        AppRegistration(
            tenant_id=f"tenant-{uuid.uuid4().hex[:6]}",
            client_id=str(uuid.uuid4()),
            client_secret="app~secret.value",
            redirect_uris=(REDIRECT,),
            user=MAILBOX,
        )
    )
    local_graph.add_mailbox(MAILBOX)
    return app


@pytest.fixture
def graph_channel(
    local_graph: LocalGraph, tenant: AppRegistration, secret_box: SecretBox
) -> Callable[..., ChannelConfig]:
    def make(*, channel_id: str | None = None, revision: int = 1, **inbound: Any) -> ChannelConfig:
        return ChannelConfig(
            id=channel_id or f"ch-{uuid.uuid4().hex[:8]}",
            name="Exchange support",
            email_address=MAILBOX,
            default_campaign_id="support",
            enabled=True,
            revision=revision,
            sync_recipient_only=inbound.pop("sync_recipient_only", False),
            inbound=GraphInbound(
                tenant_id=tenant.tenant_id,
                client_id=tenant.client_id,
                client_secret=secret_box.encrypt(tenant.client_secret),
                mailbox=MAILBOX,
                authority_host=local_graph.authority_host,
                graph_url=local_graph.graph_url,
                **inbound,
            ),
        )

    return make


async def sign_in(inbound: GraphInbound, secret_box: SecretBox, pki: TestPki) -> EncryptedSecret:
    """The administrator's "Save and authorise", straight through msal (config-api does this)."""
    tokens = GraphTokens(inbound, secrets=secret_box, ca_file=pki.ca_cert)
    flow = await tokens.start_sign_in(redirect_uri=REDIRECT, state="test~state")
    async with httpx.AsyncClient(verify=client_context(extra_ca_file=pki.ca_cert)) as browser:
        page = await browser.get(flow["auth_uri"])
    _action, answer = read_form_post(page.text)
    cache, _user = await tokens.finish_sign_in(flow, answer)
    return cache


def factory(secret_box: SecretBox, pki: TestPki, **options: Any) -> GraphSourceFactory:
    return GraphSourceFactory(
        secret_box=secret_box,
        options=GraphOptions(poll_interval=0.1, ca_file=pki.ca_cert, **options),
    )


@contextlib.asynccontextmanager
async def running_worker(
    channel: ChannelConfig,
    sources: GraphSourceFactory,
    sink: RecordingSink,
    cursor: FetchCursor | None = None,
) -> AsyncIterator[ChannelWorker]:
    worker = ChannelWorker(
        channel,
        cursor,
        sources=sources,
        sink=sink,
        blobs=MemoryBlobStore(),
        inline_max_bytes=1_000_000,
        reported_by="test-fetcher",
        policy=FAST,
    )
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        async with asyncio.timeout(10):
            await task


async def test_delta_pages_through_every_page_then_marks_read_and_publishes_each_once(
    local_graph: LocalGraph, graph_channel, secret_box, pki, wait_until
):
    """Eight messages over three delta pages all arrive once, are marked read only after the
    publish, and the marks coming back in the next delta are not taken as new mail."""
    ids = [local_graph.deliver(MAILBOX, mime(n)) for n in range(8)]
    sink = RecordingSink()
    channel = graph_channel()
    async with running_worker(channel, factory(secret_box, pki, page_size=3), sink) as worker:
        await wait_until(lambda: len(sink.raw) == 8, timeout=15)
        await wait_until(lambda: all(read for _, read in local_graph.messages(MAILBOX)))
        pages_before = len(local_graph.graph_requests("/messages/delta"))
        await asyncio.sleep(0.5)  # several more polls: the isRead changes come back in them
        new_id = local_graph.deliver(MAILBOX, mime(99))
        await wait_until(lambda: len(sink.raw) == 9, timeout=10)
        await asyncio.sleep(0.3)
    assert [e.source.graph_id for e in sink.raw] == [*ids, new_id]
    assert [e.message_id for e in sink.raw[:2]] == ["<g0@example.com>", "<g1@example.com>"]
    assert pages_before >= 3  # 8 messages at 3 per page
    assert worker.cursor.delta_links  # the inbox's delta link is the cursor
    assert sink.cursors[-1] == worker.cursor
    assert all(status.state is ChannelState.ACTIVE for status in sink.statuses)


async def test_message_deleted_between_delta_and_fetch_is_skipped_and_the_rest_is_taken(
    local_graph: LocalGraph, graph_channel, secret_box, pki
):
    """A message removed by another client after the delta round is VANISHED in the batch (not
    an error), and its neighbours are still fetched."""
    ids = [local_graph.deliver(MAILBOX, mime(n)) for n in range(3)]
    source = factory(secret_box, pki)(graph_channel())
    await source.open()
    try:
        pending = await source.pending(FetchCursor(channel_id="c"))
        assert [m.graph_id for m in pending.messages] == ids
        local_graph.remove(MAILBOX, ids[1])
        fetched = await source.fetch(pending.messages)
        await source.settle([pending.messages[1]])  # already gone: nothing to do, no error
    finally:
        await source.close()
    assert [f.message for f in fetched] == list(pending.messages)
    assert [f.outcome for f in fetched] == [Outcome.FETCHED, Outcome.VANISHED, Outcome.FETCHED]
    assert fetched[0].raw == mime(0)
    assert fetched[2].raw == mime(2)


async def test_oversize_message_comes_with_its_header_block_for_the_dead_letter(
    local_graph: LocalGraph, graph_channel, secret_box, pki
):
    """Above max_message_bytes a message is OVERSIZE with its size and header block (the worker
    dead-letters it); a small one in the same batch is FETCHED."""
    big = mime(1) + b"x" * 5000
    local_graph.deliver(MAILBOX, big)
    local_graph.deliver(MAILBOX, mime(2))
    source = factory(secret_box, pki, max_message_bytes=4000)(graph_channel())
    await source.open()
    try:
        pending = await source.pending(FetchCursor(channel_id="c"))
        fetched = await source.fetch(pending.messages)
    finally:
        await source.close()
    assert [f.outcome for f in fetched] == [Outcome.OVERSIZE, Outcome.FETCHED]
    assert fetched[0].size == len(big)
    assert fetched[0].headers is not None
    assert b"Message-ID: <g1@example.com>" in fetched[0].headers
    assert b"xxxx" not in fetched[0].headers


async def test_a_new_session_settles_what_an_earlier_one_left_pending_before_pending(
    local_graph: LocalGraph, graph_channel, secret_box, pki
):
    """The worker settles "published, settle pending" messages first thing in a new session,
    before pending(): the fresh source connects for it and marks them read."""
    ids = [local_graph.deliver(MAILBOX, mime(n)) for n in range(2)]
    sources = factory(secret_box, pki)
    first = sources(graph_channel())
    await first.open()
    try:
        pending = await first.pending(FetchCursor(channel_id="c"))
    finally:
        await first.close()
    second = sources(graph_channel())
    await second.open()
    try:
        await second.settle(pending.messages)
    finally:
        await second.close()
    assert dict(local_graph.messages(MAILBOX)) == dict.fromkeys(ids, True)


async def test_throttled_mailbox_waits_out_retry_after_while_another_mailbox_goes_on(
    local_graph: LocalGraph, tenant, graph_channel, secret_box, pki
):
    """429 with Retry-After: 1 pauses that mailbox about a second and then succeeds; a second
    mailbox of the same app is answered at once meanwhile."""
    other = "sales@contoso.test"
    local_graph.add_mailbox(other)
    local_graph.deliver(MAILBOX, mime(1))
    local_graph.deliver(other, mime(2, to=other))
    sources = factory(secret_box, pki)
    throttled = sources(graph_channel())
    free_channel = graph_channel()
    assert isinstance(free_channel.inbound, GraphInbound)
    free = sources(
        free_channel.model_copy(
            update={"inbound": free_channel.inbound.model_copy(update={"mailbox": other})}
        )
    )
    await throttled.open()
    await free.open()
    local_graph.throttle(MAILBOX, times=1, retry_after_s=1)
    timings: dict[str, float] = {}

    async def round_of(name: str, source: Any) -> int:
        started = time.monotonic()
        pending = await source.pending(FetchCursor(channel_id="c"))
        timings[name] = time.monotonic() - started
        return len(pending.messages)

    try:
        found = await asyncio.gather(round_of("throttled", throttled), round_of("free", free))
    finally:
        await throttled.close()
        await free.close()
    assert found == [1, 1]
    assert timings["throttled"] >= 1.0  # Retry-After honoured (at least once)
    assert timings["free"] < 1.0


async def test_recipient_only_leaves_mail_for_others_untouched(
    local_graph: LocalGraph, graph_channel, secret_box, pki, wait_until
):
    """With sync_recipient_only, mail to another address stays unread on the server; mail to
    the channel (also as a Bcc copy, seen through Delivered-To) is taken."""
    elsewhere = local_graph.deliver(MAILBOX, mime(1, to="someone@else.test"))
    bcc = local_graph.deliver(
        MAILBOX, b"Delivered-To: " + MAILBOX.encode() + b"\r\n" + mime(2, to="x@else.test")
    )
    direct = local_graph.deliver(MAILBOX, mime(3))
    sink = RecordingSink()
    channel = graph_channel(sync_recipient_only=True)
    async with running_worker(channel, factory(secret_box, pki), sink):
        await wait_until(lambda: len(sink.raw) == 2, timeout=10)
        await asyncio.sleep(0.3)
    assert [e.source.graph_id for e in sink.raw] == [bcc, direct]
    assert dict(local_graph.messages(MAILBOX)) == {elsewhere: False, bcc: True, direct: True}


async def test_stand_in_on_loopback_is_refused_without_the_operator_allow_list(
    graph_channel, secret_box, pki
):
    """authority_host / graph_url are admin-supplied: loopback needs EMAIL_CHANNELS_ALLOWED_HOSTS
    (step dns), like any mail host; with the allow-list the same channel works."""
    refused = GraphSourceFactory(
        secret_box=secret_box,
        options=GraphOptions(ca_file=pki.ca_cert),
        host_policy=HostPolicy(),
    )(graph_channel())
    await refused.open()
    try:
        with pytest.raises(HostRefused) as error:
            await refused.pending(FetchCursor(channel_id="c"))
    finally:
        await refused.close()
    assert error.value.step == "dns"
    allowed = GraphSourceFactory(
        secret_box=secret_box,
        options=GraphOptions(ca_file=pki.ca_cert),
        host_policy=HostPolicy.parse("127.0.0.1"),
    )(graph_channel())
    await allowed.open()
    try:
        assert (await allowed.pending(FetchCursor(channel_id="c"))).messages == []
    finally:
        await allowed.close()


async def test_sync_all_folders_takes_receiving_folders_and_their_children_only(
    local_graph: LocalGraph, graph_channel, secret_box, pki
):
    """With sync_all_folders: Inbox, its child folders, Junk, Archive and user folders are
    synced; Drafts, Sent Items and Deleted Items are not."""
    child = local_graph.add_folder(MAILBOX, "Orders", parent="inbox")
    grandchild = local_graph.add_folder(MAILBOX, "2026", parent=child)
    taken = {
        local_graph.deliver(MAILBOX, mime(n), folder=folder)
        for n, folder in enumerate(["inbox", child, grandchild, "junkemail", "archive"])
    }
    for n, folder in enumerate(["drafts", "sentitems", "deleteditems"]):
        local_graph.deliver(MAILBOX, mime(10 + n), folder=folder)
    source = factory(secret_box, pki)(graph_channel(sync_all_folders=True))
    await source.open()
    try:
        pending = await source.pending(FetchCursor(channel_id="c"))
    finally:
        await source.close()
    assert {m.graph_id for m in pending.messages} == taken
    assert len(pending.cursor.delta_links) == 0  # links are stored as each folder is taken


async def test_forgotten_delta_link_syncs_the_folder_afresh(
    local_graph: LocalGraph, graph_channel, secret_box, pki
):
    """Graph answering 410 (SyncStateNotFound) to a stored delta link restarts that folder
    with a full sync instead of failing the channel."""
    first = local_graph.deliver(MAILBOX, mime(1))
    source = factory(secret_box, pki)(graph_channel())
    await source.open()
    try:
        pending = await source.pending(FetchCursor(channel_id="c"))
        cursor = source.advance(pending.cursor, pending.messages)
        assert cursor.delta_links
        local_graph.forget_sync_state(MAILBOX)
        second = local_graph.deliver(MAILBOX, mime(2))
        again = await source.pending(cursor)
    finally:
        await source.close()
    assert [m.graph_id for m in again.messages] == [first, second]


def test_addressed_to_reads_every_recipient_header():
    """To/Cc/Delivered-To/X-Original-To count, case-insensitively; Subject does not."""
    assert addressed_to(b"To: A <Support@Contoso.test>\r\n\r\n", MAILBOX)
    assert addressed_to(b"Cc: x@y.test, support@contoso.test\r\n\r\n", MAILBOX)
    assert addressed_to(b"X-Original-To: support@contoso.test\r\n\r\n", MAILBOX)
    assert not addressed_to(b"Subject: support@contoso.test\r\nTo: a@b.test\r\n\r\n", MAILBOX)


async def test_move_after_fetch_puts_the_message_into_the_named_folder(
    local_graph: LocalGraph, graph_channel, secret_box, pki, wait_until
):
    """after_fetch=move moves each published message to move_to_folder (a display name)."""
    local_graph.add_folder(MAILBOX, "Processed")
    local_graph.deliver(MAILBOX, mime(1))
    sink = RecordingSink()
    channel = graph_channel(after_fetch=AfterFetch.MOVE, move_to_folder="Processed")
    async with running_worker(channel, factory(secret_box, pki), sink):
        await wait_until(lambda: len(local_graph.messages(MAILBOX, "Processed")) == 1)
    assert local_graph.messages(MAILBOX) == []
    assert len(sink.raw) == 1


async def test_rotated_refresh_token_is_kept_in_the_cursor_and_used_after_a_restart(
    local_graph: LocalGraph, graph_channel, secret_box, pki, wait_until
):
    """With strict rotation (the old refresh token dies on use), the fetcher stores the new
    encrypted cache in its cursor; a restart from that cursor works, the original cache not."""
    local_graph.strict_rotation = True
    local_graph.access_token_lifetime_s = 60  # under msal's 5-minute margin: refresh every time
    channel = graph_channel(auth=GraphAuth.DELEGATED)
    assert isinstance(channel.inbound, GraphInbound)
    cache = await sign_in(channel.inbound, secret_box, pki)
    inbound = channel.inbound.model_copy(update={"token_cache": cache, "authorised_at": utcnow()})
    channel = channel.model_copy(update={"inbound": inbound})
    local_graph.deliver(MAILBOX, mime(1))
    sink = RecordingSink()
    sources = factory(secret_box, pki)
    async with running_worker(channel, sources, sink) as worker:
        await wait_until(lambda: len(sink.raw) == 1)
    cursor = worker.cursor
    assert cursor.token_cache is not None
    assert cursor.token_cache != cache
    assert cursor.token_cache_authorised_at == inbound.authorised_at
    assert sink.cursors[-1].token_cache == cursor.token_cache  # persisted, not only in memory
    assert "RefreshToken" not in cursor.model_dump_json()  # encrypted: no token in clear

    restarted = sources(channel)
    await restarted.open()
    try:
        await restarted.pending(cursor)  # the rotated refresh token works
    finally:
        await restarted.close()
    stale = sources(channel)
    await stale.open()
    try:
        with pytest.raises(ChannelMisconfigured) as refused:
            await stale.pending(FetchCursor(channel_id=channel.id))  # the original one is dead
    finally:
        await stale.close()
    assert refused.value.step == "token"


# --- the whole fetcher, real Kafka -----------------------------------------------------------


@pytest.fixture
def fetcher_settings(
    kafka_settings: KafkaSettings, pki: TestPki, secret_keys: str, tmp_path: Path
) -> FetcherSettings:
    return FetcherSettings(
        kafka=kafka_settings,
        common=CommonSettings(
            secret_keys=secret_keys,  # type: ignore[arg-type]
            allowed_hosts="127.0.0.1",
            ca_file=pki.ca_cert,
            blob_store_url=f"file://{tmp_path}/blobs",
        ),
        instance_id="fetcher-graph-test",
        ensure_topics=False,
        poll_interval_s=0.5,
        retry_first_backoff_s=0.2,
        retry_max_backoff_s=1,
        misconfigured_backoff_s=1,
        stop_timeout_s=5,
    )


@pytest.mark.integration
async def test_revoked_sign_in_turns_the_channel_inactive_then_reauthorising_recovers_it(
    local_graph: LocalGraph,
    graph_channel,
    secret_box,
    pki,
    fetcher_settings,
    kafka_settings,
    topic_reader,
    wait_until,
):
    """Mail flows to email.raw; a revoked sign-in publishes inactive with step "token" on
    email.channel-status; a new sign-in (a new channel revision) makes it active again."""
    channel = graph_channel(auth=GraphAuth.DELEGATED)
    assert isinstance(channel.inbound, GraphInbound)
    inbound = channel.inbound.model_copy(
        update={
            "token_cache": await sign_in(channel.inbound, secret_box, pki),
            "authorised_at": utcnow(),
        }
    )
    channel = channel.model_copy(update={"inbound": inbound})
    local_graph.deliver(MAILBOX, mime(1))
    raw = await topic_reader(kafka_settings.topics.raw)
    status = await topic_reader(kafka_settings.topics.channel_status)

    def states() -> list[ChannelStatus]:
        key = status_key(channel.id, "inbound")
        return [decode(ChannelStatus, r.value) for r in status.records if r.key.decode() == key]

    stopping = asyncio.Event()
    app = asyncio.create_task(FetcherApp(fetcher_settings).run(stopping))
    try:
        async with EventProducer(kafka_settings, client_id="test-config-api") as producer:
            await producer.publish(producer.topics.channels, channel.id, channel)
            await wait_until(lambda: len(raw.records) == 1, timeout=30)
            assert decode(RawEmail, raw.records[0].value).source.protocol == "graph"

            local_graph.revoke(inbound.client_id)
            local_graph.deliver(MAILBOX, mime(2))
            await wait_until(
                lambda: states() and states()[-1].state is ChannelState.INACTIVE, timeout=30
            )
            assert states()[-1].step == "token"
            assert "authorise again" in (states()[-1].reason or "")

            again = inbound.model_copy(
                update={
                    "token_cache": await sign_in(inbound, secret_box, pki),
                    "authorised_at": utcnow(),
                }
            )
            channel = channel.model_copy(update={"inbound": again, "revision": 2})
            await producer.publish(producer.topics.channels, channel.id, channel)
            await wait_until(lambda: states()[-1].state is ChannelState.ACTIVE, timeout=30)
            await wait_until(lambda: len(raw.records) == 2, timeout=30)
    finally:
        stopping.set()
        async with asyncio.timeout(30):
            await app
