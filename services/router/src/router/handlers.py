"""RawEmail in -> RoutedEmail out: plain async functions, no Kafka client.

:class:`EmailRouter` turns one fetched message into its routed form (raw MIME from the record
or the blob store, parsed, routed by thread affinity, then the channel's filters, attachments
and raw MIME stored as blobs). :class:`RawRecordHandler` is the per-record unit of work the
routing loop drives: decode the record, drop duplicates, route, publish to email.routed keyed
by conversation id with the ``campaign-id`` header, and the record's marks to
email.router-state. Errors follow :mod:`email_channels.errors`; the loop applies the policy
(retry transient, dead-letter permanent).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar

import structlog
from prometheus_client import Counter

from email_channels.codec import decode, encode
from email_channels.consume import Publisher, handle_with_policy
from email_channels.errors import PermanentError
from email_channels.events import (
    Attachment,
    ChannelConfig,
    ChannelFilters,
    RawEmail,
    RoutedEmail,
    RouterMark,
    RoutingReason,
)
from email_channels.headers import CAMPAIGN_HEADER
from router import rules
from router.header_fields import header_fields
from router.marks import Marks, content_sha256, email_key, routed_mark
from router.parse_limits import DEFAULT_LIMITS
from router.parsing import conversation_id, parse_email

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from email_channels.blobstore import BlobRef, BlobStore
    from email_channels.codec import Headers
    from email_channels.consume import (
        DeadLetters,
        Record,
        RecordHandler,
        RetryPolicy,
    )
    from email_channels.events import Contract
    from router.marks import Thread
    from router.parse_limits import ParseLimits
    from router.parsing import ParsedEmail

log = structlog.get_logger(__name__)
_STDLIB_LOG = logging.getLogger(__name__)
"""The stdlib logger behind ``log`` (its level is what ``filter_by_level`` checks)."""

M_co = TypeVar("M_co", covariant=True)

MAX_ROUTED_BYTES = 900_000
"""Default upper bound of one routed record's JSON (the broker's default limit is ~1 MiB)."""
PARSE_INLINE_MAX_BYTES = 256 * 1024
"""Mail up to this size is parsed on the event loop (bounded by the parse limits: well under
a few ms); larger mail in a worker thread, so one big message never stalls the loop."""
DEFAULT_WINDOW = timedelta(days=7)
"""How long a routed Message-ID + content hash catches the same mail arriving again."""

EMAILS = Counter(
    "email_router_emails_total",
    "Fetched emails by outcome: routed, thread (routed by thread affinity), "
    "duplicate_email_id, duplicate_message",
    ["outcome"],
)

ROUTED, ROUTED_BY_THREAD = EMAILS.labels("routed"), EMAILS.labels("thread")  # once per record

TRUNCATION_NOTE = "\n[truncated by the router: the full message is in the raw MIME (raw_ref)]"


class Lookup(Protocol[M_co]):
    """Read access by key: a ``dict`` or a :class:`email_channels.compacted.CompactedView`."""

    def get(self, key: str, /) -> M_co | None: ...


class UnknownChannel(PermanentError):
    """The record names a channel the (caught-up) config does not hold, e.g. deleted."""


class MissingContent(PermanentError):
    """A RawEmail with neither inline MIME nor a blob reference."""


class RoutedTooLarge(PermanentError):
    """Even with truncated bodies the routed record exceeds the record size limit."""


@dataclass(frozen=True)
class Prepared:
    """One fetched message read, stored and parsed: everything before the routing decision."""

    raw: RawEmail
    channel: ChannelConfig
    mime: bytes
    raw_ref: BlobRef
    parsed: ParsedEmail
    attachments: list[Attachment]


class EmailRouter:
    """Routes one RawEmail; holds only read access to config and the blob store.

    Two steps: :meth:`prepare` (blob store, parsing: slow, may run ahead for a whole batch)
    and :meth:`decide` (thread, filters, the routed record: quick, in record order).
    """

    def __init__(
        self,
        *,
        channels: Lookup[ChannelConfig],
        filters: Lookup[ChannelFilters],
        blobs: BlobStore,
        catch_up: Callable[[], Awaitable[None]] | None = None,
        max_routed_bytes: int = MAX_ROUTED_BYTES,
        limits: ParseLimits = DEFAULT_LIMITS,
        parse_inline_max_bytes: int = PARSE_INLINE_MAX_BYTES,
    ) -> None:
        self._channels = channels
        self._filters = filters
        self._blobs = blobs
        self._catch_up = catch_up
        self._max_routed_bytes = max_routed_bytes
        self._parse_inline_max_bytes = parse_inline_max_bytes
        self._limits = limits

    async def channel(self, channel_id: str) -> ChannelConfig:
        """The channel's config; when unknown, catch up with the config topic once first."""
        channel = self._channels.get(channel_id)
        if channel is None and self._catch_up is not None:
            await self._catch_up()
            channel = self._channels.get(channel_id)
        if channel is None:
            raise UnknownChannel(f"channel {channel_id} is not configured (unknown or deleted)")
        return channel

    async def route(self, raw: RawEmail, marks: Marks | None = None) -> RoutedEmail:
        """Prepare and decide in one go (``marks``: thread affinity from the table)."""
        prepared = await self.prepare(raw)
        parsed = prepared.parsed
        thread = (
            marks.thread_of(raw.channel_id, parsed.in_reply_to, parsed.references)
            if marks is not None
            else None
        )
        return self.decide(prepared, thread)

    async def prepare(self, raw: RawEmail) -> Prepared:
        channel = await self.channel(raw.channel_id)
        mime, raw_ref = await self._raw_mime(raw)
        parse = partial(parse_email, mime, own_address=channel.email_address, limits=self._limits)
        if len(mime) <= self._parse_inline_max_bytes:  # bounded: cheaper than a thread hop
            parsed = parse()
        else:
            parsed = await asyncio.to_thread(parse)
        if parsed.defects:
            log.info("message had MIME defects", email_id=raw.email_id, defects=parsed.defects)
        attachments = await self._store_attachments(parsed)
        return Prepared(raw, channel, mime, raw_ref, parsed, attachments)

    def decide(self, prepared: Prepared, thread: Thread | None = None) -> RoutedEmail:
        """The routed email: a reply in a known thread stays in its conversation and campaign
        (before any filter); otherwise the channel's filters, else its default campaign."""
        return self.decide_record(prepared, thread).email

    def decide_record(self, prepared: Prepared, thread: Thread | None = None) -> RoutedRecord:
        """:meth:`decide`, with the record value (bodies cut to the record size limit)."""
        raw, channel, parsed = prepared.raw, prepared.channel, prepared.parsed
        if thread is not None:
            decision = rules.Decision(
                thread.campaign_id,
                RoutingReason(kind="thread", thread_message_id=thread.message_id),
            )
            conversation = thread.conversation_id
        else:
            conversation = None
            filters = self._filters.get(channel.id)
            wanted = rules.wanted_headers(filters)
            headers = header_fields(prepared.mime, wanted) if wanted else None
            decision = rules.route(parsed, filters, channel, headers)
        if conversation is None:
            conversation = conversation_id(
                channel.id,
                references=parsed.references,
                in_reply_to=parsed.in_reply_to,
                message_id=parsed.message_id,
                email_id=raw.email_id,
            )
        routed = RoutedEmail(
            email_id=raw.email_id,
            channel_id=channel.id,
            campaign_id=decision.campaign_id,
            reason=decision.reason,
            conversation_id=conversation,
            message_id=parsed.message_id,
            in_reply_to=parsed.in_reply_to,
            references=list(parsed.references),
            from_=parsed.from_,
            reply_to=list(parsed.reply_to),
            to=list(parsed.to),
            cc=list(parsed.cc),
            subject=parsed.subject,
            date=parsed.date,
            text_body=parsed.text_body,
            html_body=parsed.html_body,
            attachments=prepared.attachments,
            raw_ref=prepared.raw_ref,
            source=raw.source,
            flags=parsed.flags,
            undecoded_headers=list(parsed.undecoded_headers),
        )
        return fitted(routed, self._max_routed_bytes)

    async def _raw_mime(self, raw: RawEmail) -> tuple[bytes, BlobRef]:
        """The raw MIME and its blob reference (inline MIME is stored, so the ref always exists)."""
        if raw.raw_ref is not None:
            return await self._blobs.get(raw.raw_ref), raw.raw_ref
        if raw.raw_mime is None:
            raise MissingContent(f"email {raw.email_id} carries neither raw_mime nor raw_ref")
        ref = await self._blobs.put(raw.raw_mime)  # hashes it once, for the check as well
        if ref.sha256 != raw.sha256.lower():
            log.warning(
                "raw MIME does not hash to the record's sha256",
                email_id=raw.email_id,
                record_sha256=raw.sha256,
                actual_sha256=ref.sha256,
            )
        return raw.raw_mime, ref

    async def _store_attachments(self, parsed: ParsedEmail) -> list[Attachment]:
        attachments: list[Attachment] = []
        for part in parsed.attachments:
            ref = await self._blobs.put(part.content)
            attachments.append(
                Attachment(
                    filename=part.filename,
                    content_type=part.content_type,
                    size=ref.size,
                    sha256=ref.sha256,
                    blob=ref,
                    inline=part.inline,
                    content_id=part.content_id,
                )
            )
        return attachments


@dataclass(frozen=True)
class RoutedRecord:
    """A routed email and its record value (encoded once: for the size check and the send)."""

    email: RoutedEmail
    value: bytes


def fit_record(routed: RoutedEmail, max_bytes: int) -> RoutedEmail:
    """Truncate the html, then the text body until the record fits ``max_bytes``.

    Nothing is lost: the full message stays in the blob store under ``raw_ref``.
    """
    return fitted(routed, max_bytes).email


def fitted(routed: RoutedEmail, max_bytes: int) -> RoutedRecord:
    """:func:`fit_record`, with the record value it measured."""
    value = encode(routed)
    truncated = False
    for name in ("html_body", "text_body"):
        text: str | None = getattr(routed, name)
        for _ in range(8):
            if len(value) <= max_bytes or not text:
                break
            encoded_field = len(json.dumps(text, ensure_ascii=False).encode())
            keep = max(0, encoded_field - (len(value) - max_bytes) - len(TRUNCATION_NOTE) - 64)
            text = text[: int(len(text) * keep / encoded_field)]
            routed = routed.model_copy(update={name: text + TRUNCATION_NOTE})
            value = encode(routed)
            truncated = True
    if len(value) > max_bytes:
        raise RoutedTooLarge(
            f"routed email {routed.email_id} is {len(value)} bytes even without bodies "
            f"(limit {max_bytes})"
        )
    if truncated:
        log.warning("bodies truncated to fit the record limit", email_id=routed.email_id)
    return RoutedRecord(routed, value)


class RoutedPublisher(Publisher, Protocol):
    """A :class:`~email_channels.consume.Publisher` that also sends a record whose value the
    caller encoded already (the routed email: encoded once, to check its size)."""

    async def publish_encoded(
        self, topic: str, key: str, event: Contract, value: bytes, *, headers: Headers
    ) -> object: ...


class RawRecordHandler:
    """One email.raw record -> one email.routed record and its marks (the consume loop's
    handler), or nothing for a duplicate.

    Duplicates, checked against the table (:mod:`router.marks`) in record order: an email id
    already routed (a re-fetch), or the same Message-ID with the same content within the
    window on the same channel (the same mail by another path). Both are dropped, logged and
    counted. Publishing comes last, so a retried record never publishes twice.

    :meth:`prefetch` starts :meth:`EmailRouter.prepare` for a batch ahead of time (bounded);
    the records are still decided and published one by one, in order.
    """

    def __init__(
        self,
        router: EmailRouter,
        publisher: RoutedPublisher,
        marks: Marks | None = None,
        *,
        prefetch_concurrency: int = 8,
    ) -> None:
        self._router = router
        self._publisher = publisher
        self._marks = marks if marks is not None else Marks(window=DEFAULT_WINDOW)
        self._ahead = asyncio.Semaphore(prefetch_concurrency)
        self._prefetched: dict[tuple[str, int, int], asyncio.Task[Prepared]] = {}

    @property
    def marks(self) -> Marks:
        return self._marks

    def prefetch(self, records: Iterable[Record]) -> None:
        for record in records:
            task = asyncio.create_task(self._prepare_ahead(record))
            self._prefetched[(record.topic, record.partition, record.offset)] = task

    def drop_prefetched(self) -> None:
        for task in self._prefetched.values():
            task.cancel()
        self._prefetched.clear()

    async def _prepare_ahead(self, record: Record) -> Prepared:
        async with self._ahead:
            return await self._router.prepare(decode(RawEmail, record.value))

    async def _prepared(self, record: Record) -> Prepared:
        """The prefetched result (once; a retry prepares afresh), or prepare now."""
        task = self._prefetched.pop((record.topic, record.partition, record.offset), None)
        if task is not None:
            return await task
        return await self._router.prepare(decode(RawEmail, record.value))

    async def __call__(self, record: Record) -> None:
        prepared = await self._prepared(record)
        raw = prepared.raw
        # bind/reset rather than bound_contextvars(): no context manager per record (~3 us)
        bound = structlog.contextvars.bind_contextvars(
            channel_id=raw.channel_id, email_id=raw.email_id
        )
        try:
            await self._handle(prepared)
        finally:
            structlog.contextvars.reset_contextvars(**bound)

    async def _handle(self, prepared: Prepared) -> None:
        raw, parsed = prepared.raw, prepared.parsed
        if self._marks.seen(raw.email_id):
            EMAILS.labels("duplicate_email_id").inc()
            log.info("duplicate dropped: email id already routed")
            return
        thread = self._marks.thread_of(raw.channel_id, parsed.in_reply_to, parsed.references)
        decided = self._router.decide_record(prepared, thread)
        routed = decided.email
        content = content_sha256(routed)
        earlier = self._marks.duplicate_of(
            raw.channel_id, routed.message_id, content, now=datetime.now(UTC)
        )
        if earlier is not None:
            seen = earlier.model_copy(update={"email_id": raw.email_id})
            await self._publish_mark(email_key(raw.email_id), seen)
            EMAILS.labels("duplicate_message").inc()
            log.info(
                "duplicate dropped: same Message-ID and content already routed",
                message_id=routed.message_id,
                earlier_email_id=earlier.email_id,
            )
            return
        await self._publisher.publish_encoded(
            self._publisher.topics.routed,
            routed.conversation_id,
            routed,
            decided.value,
            headers=[(CAMPAIGN_HEADER, routed.campaign_id.encode())],
        )
        await self._publish_mark(email_key(raw.email_id), routed_mark(routed, content))
        (ROUTED_BY_THREAD if thread is not None else ROUTED).inc()
        if _STDLIB_LOG.isEnabledFor(logging.INFO):  # the one line per mail: built only if kept
            log.info(
                "email routed",
                campaign_id=routed.campaign_id,
                reason=routed.reason.kind,
                filter_id=routed.reason.filter_id,
                conversation_id=routed.conversation_id,
                attachments=len(routed.attachments),
                auto_reply=routed.flags.auto_reply,
                bounce=routed.flags.bounce,
                loop=routed.flags.loop,
            )

    async def _publish_mark(self, key: str, mark: RouterMark) -> None:
        await self._publisher.publish(self._publisher.topics.router_state, key, mark)
        self._marks.stage(mark)


class RecordProcessor:
    """Applies the shared error policy to one record and returns only when it is settled.

    Settled means routed, or dead-lettered with the reason (``handle_with_policy``: transient
    errors retried with capped backoff, everything else dead-lettered, a dead letter that
    cannot be published retried until it is): the record is never acked unsettled.
    Cancellation (shutdown) propagates, leaving the record unacked for re-delivery.
    """

    def __init__(
        self,
        handler: RecordHandler,
        *,
        dead_letters: DeadLetters,
        policy: RetryPolicy,
        stage: str,
    ) -> None:
        self._handler = handler
        self._dead_letters = dead_letters
        self._policy = policy
        self._stage = stage
        self._never = asyncio.Event()  # shutdown arrives as cancellation, not via this event

    async def __call__(self, record: Record) -> None:
        await handle_with_policy(
            record,
            self._handler,
            dead_letters=self._dead_letters,
            policy=self._policy,
            stopping=self._never,
            stage=self._stage,
        )
