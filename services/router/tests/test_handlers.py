"""The handler: RawEmail in, RoutedEmail out, with a memory blob store and dicts for config.

Records go through ``RecordProcessor`` -> ``handle_with_policy`` (the shared policy the app
uses), so dead-lettering and retries behave as in production; only Kafka is replaced by an
in-memory publisher of our own ``Publisher`` interface.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import sys
from email.message import EmailMessage

import pytest
from aiokafka.structs import ConsumerRecord

from email_channels.blobstore import BlobRef, BlobStoreUnavailable, MemoryBlobStore
from email_channels.codec import Headers, decode, encode, header
from email_channels.consume import DeadLetters, RetryPolicy
from email_channels.errors import TransientError
from email_channels.events import (
    Address,
    ChannelConfig,
    ChannelFilters,
    Contract,
    DeadLetter,
    Filter,
    HeaderCondition,
    RawEmail,
    RoutedEmail,
    RouterMark,
    SourceIdentity,
)
from email_channels.topics import TopicNames
from router.handlers import (
    TRUNCATION_NOTE,
    EmailRouter,
    RawRecordHandler,
    RecordProcessor,
    RoutedTooLarge,
    UnknownChannel,
    fit_record,
)
from router.parse_limits import ParseLimits

TOPICS = TopicNames("t.")
CHANNEL = ChannelConfig(
    id="ch-1", name="Support", email_address="support@shop.example", default_campaign_id="support"
)
FILTERS = ChannelFilters(
    channel_id="ch-1",
    filters=[Filter(id="f-billing", campaign_id="billing", subject_keywords=["invoice"])],
)
FAST = RetryPolicy(attempts=3, first_backoff=0.001, max_backoff=0.001)


class MemoryPublisher:
    """Our ``Publisher`` interface, keeping what was published; can be told to fail."""

    def __init__(self) -> None:
        self.topics = TOPICS
        self.sent: list[tuple[str, str, Contract | None, Headers]] = []
        self.failures: list[Exception] = []

    async def publish(
        self,
        topic: str,
        key: str,
        event: Contract | None,
        *,
        headers: Headers | None = None,
        **header_values: str,
    ) -> object:
        if self.failures:
            raise self.failures.pop(0)
        all_headers = list(headers or []) + [(k, v.encode()) for k, v in header_values.items()]
        self.sent.append((topic, key, event, all_headers))
        return None

    async def publish_encoded(
        self, topic: str, key: str, event: Contract, value: bytes, *, headers: Headers
    ) -> object:
        assert value == encode(event), "the value sent is the event's record value"
        return await self.publish(topic, key, event, headers=headers)

    def on(self, topic: str) -> list[tuple[str, Contract | None, Headers]]:
        return [(k, e, h) for t, k, e, h in self.sent if t == topic]


def mail(subject: str = "Where is my order?", **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = "Alice <alice@customer.example>"
    message["To"] = "support@shop.example"
    message["Subject"] = subject
    message["Message-ID"] = "<m1@customer.example>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("Hello, where is my order?")
    message.add_attachment(b"%PDF invoice", maintype="application", subtype="pdf",
                           filename="invoice.pdf")  # fmt: skip
    return message.as_bytes()


def raw_email(mime: bytes, *, channel_id: str = "ch-1", ref: BlobRef | None = None) -> RawEmail:
    return RawEmail(
        email_id=f"e-{hashlib.sha256(mime).hexdigest()[:8]}",
        channel_id=channel_id,
        source=SourceIdentity(protocol="imap", folder="INBOX", uidvalidity=1, uid=7),
        size=len(mime),
        sha256=hashlib.sha256(mime).hexdigest(),
        raw_mime=None if ref else mime,
        raw_ref=ref,
    )


_offsets = itertools.count()


def record(value: bytes | None, key: bytes = b"ch-1") -> ConsumerRecord:
    return ConsumerRecord(
        topic=TOPICS.raw,
        partition=0,
        offset=next(_offsets),
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value or b""),
        headers=[("schema", b"RawEmail/v1")],
    )


class Harness:
    def __init__(
        self,
        channels: dict[str, ChannelConfig] | None = None,
        filters: dict[str, ChannelFilters] | None = None,
        policy: RetryPolicy = FAST,
    ) -> None:
        self.channels = {CHANNEL.id: CHANNEL} if channels is None else channels
        self.filters = {FILTERS.channel_id: FILTERS} if filters is None else filters
        self.blobs = MemoryBlobStore()
        self.publisher = MemoryPublisher()
        self.catch_ups = 0
        self.late_channels: dict[str, ChannelConfig] = {}
        self.router = EmailRouter(
            channels=self.channels, filters=self.filters, blobs=self.blobs, catch_up=self.catch_up
        )
        self.handler = RawRecordHandler(self.router, self.publisher)
        self.marks = self.handler.marks
        self.process = RecordProcessor(
            self.handler,
            dead_letters=DeadLetters(self.publisher, stage="router", blobs=self.blobs),
            policy=policy,
            stage="router",
        )

    async def catch_up(self) -> None:
        """Stands in for reading the config topics to their end: late channels appear."""
        self.catch_ups += 1
        self.channels.update(self.late_channels)

    def routed(self) -> list[tuple[str, RoutedEmail, Headers]]:
        return [(k, e, h) for k, e, h in self.publisher.on(TOPICS.routed)
                if isinstance(e, RoutedEmail)]  # fmt: skip

    def dead(self) -> list[tuple[str, DeadLetter]]:
        return [(k, e) for k, e, _ in self.publisher.on(TOPICS.dlq) if isinstance(e, DeadLetter)]


async def test_a_fetched_email_is_routed_with_parsed_fields_and_blobs() -> None:
    """Default campaign, keyed by conversation id, campaign header, blobs for MIME and files."""
    harness = Harness()
    mime = mail()
    await harness.process(record(encode(raw_email(mime))))

    [(key, routed, headers)] = harness.routed()
    assert key == routed.conversation_id
    assert header(headers, "campaign-id") == "support"
    assert routed.campaign_id == "support"
    assert routed.reason.kind == "default"
    assert routed.channel_id == "ch-1"
    assert routed.message_id == "<m1@customer.example>"
    assert routed.from_ is not None
    assert routed.from_.address == "alice@customer.example"
    assert routed.subject == "Where is my order?"
    assert routed.text_body == "Hello, where is my order?\n"
    assert routed.source.uid == 7
    assert routed.raw_ref == BlobRef.of(mime)
    assert harness.blobs.blobs[routed.raw_ref.sha256] == mime
    [attachment] = routed.attachments
    assert attachment.filename == "invoice.pdf"
    assert attachment.blob is not None
    assert harness.blobs.blobs[attachment.blob.sha256] == b"%PDF invoice"
    assert harness.dead() == []


async def test_a_matching_filter_picks_the_campaign() -> None:
    harness = Harness()
    await harness.process(record(encode(raw_email(mail(subject="Invoice 42 missing")))))
    [(_, routed, headers)] = harness.routed()
    assert routed.campaign_id == "billing"
    assert routed.reason.kind == "filter"
    assert routed.reason.filter_id == "f-billing"
    assert header(headers, "campaign-id") == "billing"


async def test_raw_mime_by_claim_check_is_read_from_the_blob_store() -> None:
    harness = Harness()
    mime = mail()
    ref = await harness.blobs.put(mime)
    await harness.process(record(encode(raw_email(mime, ref=ref))))
    [(_, routed, _)] = harness.routed()
    assert routed.raw_ref == ref
    assert routed.subject == "Where is my order?"


async def test_replies_share_the_conversation_id_of_their_thread() -> None:
    harness = Harness()
    await harness.process(record(encode(raw_email(mail()))))
    reply = mail(subject="Re: order", In_Reply_To="<m1@customer.example>")
    reply = reply.replace(b"<m1@customer.example>\n", b"<m2@customer.example>\n", 1)
    await harness.process(record(encode(raw_email(reply))))
    first, second = (routed for _, routed, _ in harness.routed())
    assert second.message_id == "<m2@customer.example>"
    assert first.conversation_id == second.conversation_id


async def test_garbage_on_the_raw_topic_is_dead_lettered_with_the_reason() -> None:
    harness = Harness()
    await harness.process(record(b"\x00not json", key=b"ch-9"))
    await harness.process(record(None, key=b"ch-9"))
    [(key, letter), (_, empty)] = harness.dead()
    assert key == "ch-9"
    assert letter.stage == "router"
    assert letter.error_kind == "PoisonRecord"
    assert letter.original_value == b"\x00not json"
    assert letter.original_key == b"ch-9"
    assert letter.original_headers == {"schema": "RawEmail/v1"}
    assert empty.error_kind == "PoisonRecord"
    assert harness.routed() == []


async def test_an_unknown_channel_is_looked_up_again_after_catching_up() -> None:
    """A channel created a moment ago is found once the config has been read to its end."""
    harness = Harness(channels={})
    harness.late_channels = {CHANNEL.id: CHANNEL}
    await harness.process(record(encode(raw_email(mail()))))
    assert harness.catch_ups == 1
    assert len(harness.routed()) == 1


async def test_a_channel_unknown_even_after_catching_up_is_dead_lettered() -> None:
    harness = Harness(channels={})
    await harness.process(record(encode(raw_email(mail(), channel_id="ch-gone"))))
    [(_, letter)] = harness.dead()
    assert letter.error_kind == UnknownChannel.__name__
    assert "ch-gone" in letter.error_message
    assert harness.catch_ups == 1


async def test_a_channel_without_default_campaign_is_unroutable() -> None:
    bare = ChannelConfig(id="ch-1", name="no default")
    harness = Harness(channels={"ch-1": bare}, filters={})
    await harness.process(record(encode(raw_email(mail()))))
    [(_, letter)] = harness.dead()
    assert letter.error_kind == "Unroutable"
    assert not letter.retriable


async def test_unparseable_mime_is_dead_lettered() -> None:
    harness = Harness()
    await harness.process(record(encode(raw_email(b"\r\n\r\njust a body"))))
    [(_, letter)] = harness.dead()
    assert letter.error_kind == "UnparseableEmail"


async def test_transient_failures_are_retried_and_nothing_is_dead_lettered() -> None:
    harness = Harness(policy=RetryPolicy(attempts=10, first_backoff=0.001, max_backoff=0.001))
    harness.publisher.failures = [TransientError("broker away"), TransientError("still away")]
    await harness.process(record(encode(raw_email(mail()))))
    assert len(harness.routed()) == 1
    assert harness.dead() == []


async def test_a_missing_claim_check_blob_is_dead_lettered() -> None:
    harness = Harness()
    mime = mail()
    await harness.process(record(encode(raw_email(mime, ref=BlobRef.of(mime)))))
    [(_, letter)] = harness.dead()
    assert letter.error_kind == "BlobNotFound"


async def test_if_even_the_dead_letter_fails_it_is_published_again() -> None:
    """Never settle a record that is neither routed nor dead-lettered: the dead letter is
    retried until Kafka takes it, with the original reason."""
    harness = Harness()
    harness.publisher.failures = [
        RuntimeError("bug while routing"),  # not a PipelineError: dead-letter at once
        BlobStoreUnavailable("dlq publish fails too"),  # ...which also fails
    ]
    await harness.process(record(encode(raw_email(mail()))))
    assert harness.routed() == []
    [(_, letter)] = harness.dead()
    assert letter.error_kind == "RuntimeError"


async def test_shutdown_during_retries_leaves_the_record_unsettled() -> None:
    harness = Harness(policy=RetryPolicy(attempts=1000, first_backoff=10, max_backoff=10))
    harness.publisher.failures = [TransientError("broker away")]
    task = asyncio.create_task(harness.process(record(encode(raw_email(mail())))))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert harness.routed() == []
    assert harness.dead() == []


def test_oversized_bodies_are_truncated_to_fit_the_record_limit() -> None:
    routed = RoutedEmail(
        email_id="e1",
        channel_id="ch-1",
        campaign_id="c",
        reason={"kind": "default"},
        conversation_id="x",
        source=SourceIdentity(protocol="pop3", uidl="u1"),
        text_body="t\n" * 300_000,
        html_body="<p>" + "h\u00e9" * 400_000,
    )
    fitted = fit_record(routed, 200_000)
    assert len(encode(fitted)) <= 200_000
    assert fitted.html_body is not None
    assert fitted.html_body.endswith(TRUNCATION_NOTE)
    small = routed.model_copy(update={"text_body": "short", "html_body": None})
    assert fit_record(small, 200_000) is small
    with pytest.raises(RoutedTooLarge):
        fit_record(
            small.model_copy(update={"to": [Address(address="a@b.example")] * 20_000}), 200_000
        )


def test_routed_json_round_trips() -> None:
    """What the handler publishes decodes back to the same event (the wire contract)."""
    routed = RoutedEmail.model_validate(
        {
            "email_id": "e1",
            "channel_id": "ch-1",
            "campaign_id": "c",
            "reason": {"kind": "filter", "filter_id": "f"},
            "conversation_id": "x",
            "from": {"name": "A", "address": "a@b.example"},
            "source": {"protocol": "graph", "graph_id": "g"},
        }
    )
    assert decode(RoutedEmail, encode(routed)) == routed


def test_unlimited_retries_keep_a_capped_backoff() -> None:
    """The router retries transient faults without a limit: the backoff must stay finite."""
    policy = RetryPolicy(attempts=sys.maxsize, first_backoff=0.2, max_backoff=30.0)
    assert policy.backoff(1) == 0.2
    assert policy.backoff(5_000) == 30.0


# --- duplicates and thread affinity (the table of marks) -----------------------------------------


def marks_of(harness: Harness) -> dict[str, RouterMark]:
    return {k: e for k, e, _ in harness.publisher.on(TOPICS.router_state)
            if isinstance(e, RouterMark)}  # fmt: skip


async def test_a_routed_email_leaves_its_mark_in_the_router_state() -> None:
    """One mark per routed email: id, Message-ID, content hash, conversation and campaign."""
    harness = Harness()
    raw = raw_email(mail())
    await harness.process(record(encode(raw)))
    [(_, routed, _)] = harness.routed()
    marks = marks_of(harness)
    assert set(marks) == {f"email/{raw.email_id}"}
    mark = marks[f"email/{raw.email_id}"]
    assert (mark.message_id, mark.conversation_id, mark.campaign_id) == (
        "<m1@customer.example>",
        routed.conversation_id,
        "support",
    )
    assert mark.content_sha256 is not None


async def test_a_refetched_email_id_is_routed_once() -> None:
    """The fetcher publishing the same message again (same email id) is dropped."""
    harness = Harness()
    raw = raw_email(mail())
    await harness.process(record(encode(raw)))
    await harness.process(record(encode(raw)))
    assert len(harness.routed()) == 1
    assert harness.dead() == []


async def test_the_same_mail_from_a_second_folder_is_dropped_as_a_duplicate() -> None:
    """Same Message-ID and content, another path (trace headers, email id): routed once."""
    harness = Harness()
    first = raw_email(mail())
    copy_mime = b"Received: from relay by archive\r\n" + mail()
    copy = raw_email(copy_mime).model_copy(update={"email_id": "e-archive-copy"})
    await harness.process(record(encode(first)))
    await harness.process(record(encode(copy)))
    assert [routed.email_id for _, routed, _ in harness.routed()] == [first.email_id]
    assert "email/e-archive-copy" in marks_of(harness)


async def test_the_same_message_id_with_other_content_is_not_a_duplicate() -> None:
    """A Message-ID reused for different content (a broken client) is still routed."""
    harness = Harness()
    await harness.process(record(encode(raw_email(mail()))))
    await harness.process(record(encode(raw_email(mail(subject="Something else")))))
    assert len(harness.routed()) == 2


def reply_to(parent: str, *, subject: str = "Re: order") -> bytes:
    reply = mail(subject=subject, In_Reply_To=parent, References=parent)
    return reply.replace(b"<m1@customer.example>\n", b"<m9@customer.example>\n", 1)


async def test_a_reply_follows_its_thread_before_any_filter() -> None:
    """The original went to billing by filter; the reply has no invoice keyword but joins the
    same campaign and conversation (reason: thread)."""
    harness = Harness()
    await harness.process(record(encode(raw_email(mail(subject="Invoice 42 missing")))))
    await harness.process(record(encode(raw_email(reply_to("<m1@customer.example>")))))
    (_, original, _), (key, reply, headers) = harness.routed()
    assert original.campaign_id == "billing"
    assert reply.campaign_id == "billing"
    assert reply.reason.kind == "thread"
    assert reply.reason.thread_message_id == "m1@customer.example"
    assert reply.conversation_id == original.conversation_id == key
    assert header(headers, "campaign-id") == "billing"


async def test_a_reply_to_mail_the_product_sent_joins_the_sent_campaign() -> None:
    """A sent mark (from email.delivery) routes the customer's answer to the sending
    campaign, in the outbound's conversation."""
    harness = Harness()
    harness.marks.apply(
        RouterMark(
            kind="sent",
            channel_id="ch-1",
            outbound_id="out-1",
            message_id="<out-1@shop.example>",
            conversation_id="conv-sales",
            campaign_id="sales",
        ),
    )
    await harness.process(record(encode(raw_email(reply_to("<out-1@shop.example>")))))
    [(key, reply, _)] = harness.routed()
    assert (reply.campaign_id, reply.conversation_id, key) == ("sales", "conv-sales", "conv-sales")


async def test_a_reply_to_unknown_mail_goes_through_the_filters() -> None:
    """No mark for the parent: filters and the default campaign decide as usual."""
    harness = Harness()
    await harness.process(
        record(encode(raw_email(reply_to("<nobody@else.example>", subject="Invoice?"))))
    )
    [(_, reply, _)] = harness.routed()
    assert reply.reason.kind == "filter"
    assert reply.campaign_id == "billing"


async def test_a_header_condition_routes_by_a_header_field() -> None:
    """A filter with a header condition matches the decoded header value, case-insensitively."""
    rule = Filter(
        id="f-list",
        campaign_id="newsletters",
        header_conditions=[HeaderCondition(header="List-Id", keywords=["NEWS"])],
    )
    harness = Harness(filters={"ch-1": ChannelFilters(channel_id="ch-1", filters=[rule])})
    await harness.process(record(encode(raw_email(mail(List_Id="<news.shop.example>")))))
    await harness.process(record(encode(raw_email(mail(subject="plain")))))
    (_, listed, _), (_, plain, _) = harness.routed()
    assert (listed.campaign_id, listed.reason.filter_id) == ("newsletters", "f-list")
    assert plain.campaign_id == "support"


async def test_the_parse_limits_given_to_the_router_bound_its_parse() -> None:
    """The ROUTER_PARSE_* bounds reach the parser: over one part, the mail is routed with
    what was read and the bound named; on the loop or in a worker thread alike."""
    for inline_max in (10**6, 0):
        harness = Harness()
        harness.router = EmailRouter(
            channels=harness.channels,
            filters=harness.filters,
            blobs=harness.blobs,
            limits=ParseLimits(max_parts=1),
            parse_inline_max_bytes=inline_max,
        )
        routed = await harness.router.route(raw_email(mail()))
        assert "parts" in routed.flags.parse_limits
        assert routed.subject == "Where is my order?"
