"""The config state: in-memory views of the compacted topics, and the writes to them.

Kafka is the database. At start the views read the config topics from the beginning, and the
API serves only once they have caught up, so a restarted config-api sees exactly what was
there before. Every write

1. runs under one lock and checks the channel's ``revision`` (optimistic concurrency: a stale
   revision is a 409 naming the current one — no lost update between clients of this
   instance);
2. is published in a Kafka transaction with a fixed transactional id: an instance starting with
   the same id fences the previous one, so there is one writer at a time and a fenced instance
   can never overwrite a newer one's work (it answers 503 and reports itself not ready);
3. returns only after the view has read the record back (read-your-writes).

Kafka errors are translated into :mod:`config_api.errors` here, in :meth:`ConfigStore._publish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka.errors import KafkaError, ProducerFenced

from config_api.errors import (
    AlreadyExists,
    CampaignInUse,
    ConfigApiError,
    InvalidInput,
    NotFound,
    RevisionConflict,
    Unavailable,
    WriterFenced,
)
from config_api.metrics import WRITE_SECONDS, WRITES
from config_api.rules import channel_problems, filter_list_problems
from config_api.status import channel_status
from email_channels.compacted import CompactedView
from email_channels.errors import PipelineError, TransientError
from email_channels.events import (
    ApiToken,
    Campaign,
    ChannelConfig,
    ChannelFilters,
    ChannelStatus,
    Filter,
    status_key,
    utcnow,
)
from email_channels.producer import EventProducer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from config_api.schemas import StatusOut
    from email_channels.events import Contract
    from email_channels.settings import KafkaSettings

log = structlog.get_logger(__name__)

_CLIENT_OUTCOMES = frozenset({"ok", "invalid", "conflict", "not_found"})

Write = tuple[CompactedView[Any], str, "Contract | None"]
"""One record of a write: the view of its topic, the key, the value (None = tombstone)."""


class ConfigStore:
    """Views of email.channels, email.filters, email.campaigns, email.channel-status + writes."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        transactional_id: str,
        client_id: str = "config-api",
        write_timeout_s: float = 10.0,
    ) -> None:
        topics = kafka.topics
        self.channels = CompactedView(
            kafka, topics.channels, ChannelConfig, client_id=f"{client_id}-channels"
        )
        self.filters = CompactedView(
            kafka, topics.filters, ChannelFilters, client_id=f"{client_id}-filters"
        )
        self.campaigns = CompactedView(
            kafka, topics.campaigns, Campaign, client_id=f"{client_id}-campaigns"
        )
        self.statuses = CompactedView(
            kafka, topics.channel_status, ChannelStatus, client_id=f"{client_id}-status"
        )
        self.tokens = CompactedView(
            kafka, topics.api_tokens, ApiToken, client_id=f"{client_id}-tokens"
        )
        self._views: tuple[CompactedView[Any], ...] = (
            self.channels,
            self.filters,
            self.campaigns,
            self.statuses,
            self.tokens,
        )
        self._producer = EventProducer(
            kafka, client_id=client_id, transactional_id=transactional_id
        )
        self._write_timeout_s = write_timeout_s
        self._lock = asyncio.Lock()
        self._unread: list[tuple[CompactedView[Any], int, int]] = []
        self._started = False
        self._fenced = False

    # --- lifecycle ---

    async def start(self, *, timeout: float = 60.0) -> None:
        """Connect, fence older writers, and read every view up to the end of its topic.

        The producer goes first: registering the transactional id aborts any transaction a
        previous instance left open, so the views then catch up to a settled log.
        """
        try:
            try:
                async with asyncio.timeout(timeout):
                    await self._producer.start()
            except TimeoutError as exc:
                msg = f"the Kafka producer did not initialise within {timeout}s"
                raise TransientError(msg) from exc
            await self._start_views(timeout)
        except BaseException:
            await self.stop()
            raise
        self._started = True
        log.info(
            "config read from kafka",
            channels=len(self.channels),
            campaigns=len(self.campaigns),
            filters=len(self.filters),
            statuses=len(self.statuses),
        )

    async def _start_views(self, timeout: float) -> None:
        # gather, not a TaskGroup: every view's start ends by itself (bounded by ``timeout``),
        # so none is cancelled half-way through opening its consumer.
        results = await asyncio.gather(
            *(view.start(timeout=timeout) for view in self._views), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def stop(self) -> None:
        self._started = False
        for view in self._views:
            with contextlib.suppress(Exception):
                await view.stop()
        with contextlib.suppress(Exception):
            await self._producer.stop()

    @property
    def ready(self) -> bool:
        return self.not_ready_reason is None

    @property
    def not_ready_reason(self) -> str | None:
        if self._fenced:
            return "fenced: a newer config-api instance writes the config now"
        if not self._started or not all(view.caught_up for view in self._views):
            return "starting: still reading the config topics"
        return None

    # --- reads ---

    def channel(self, channel_id: str) -> ChannelConfig:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise NotFound(f"channel {channel_id!r} does not exist")
        return channel

    def status_of(self, channel: ChannelConfig) -> StatusOut:
        """The channel's indicator (see :mod:`config_api.status`)."""
        return channel_status(
            channel,
            {
                "inbound": self.statuses.get(status_key(channel.id, "inbound")),
                "outbound": self.statuses.get(status_key(channel.id, "outbound")),
            },
        )

    def campaign(self, campaign_id: str) -> Campaign:
        campaign = self.campaigns.get(campaign_id)
        if campaign is None:
            raise NotFound(f"campaign {campaign_id!r} does not exist")
        return campaign

    # --- writes ---

    async def create_campaign(self, campaign: Campaign) -> Campaign:
        async with self._write("campaign", "create", campaign_id=campaign.id):
            if campaign.id in self.campaigns:
                raise AlreadyExists(f"campaign {campaign.id!r} already exists")
            await self._publish([(self.campaigns, campaign.id, campaign)])
            return self.campaign(campaign.id)

    async def create_channel(self, channel: ChannelConfig) -> ChannelConfig:
        async with self._write("channel", "create", channel_id=channel.id) as line:
            if channel.id in self.channels:
                raise AlreadyExists(f"channel {channel.id!r} already exists")
            self._check(channel)
            await self._publish([(self.channels, channel.id, channel)])
            saved = self.channel(channel.id)
            line.update(revision=saved.revision, enabled=saved.enabled)
            return saved

    async def update_channel(
        self,
        channel_id: str,
        *,
        revision: int,
        change: Callable[[ChannelConfig], ChannelConfig],
    ) -> ChannelConfig:
        """Replace the channel by ``change(current)`` if ``revision`` is still the current one."""
        async with self._write("channel", "update", channel_id=channel_id) as line:
            current = self.channel(channel_id)
            if current.revision != revision:
                raise RevisionConflict(
                    "channel", channel_id, sent=revision, current=current.revision
                )
            channel = change(current)
            if channel.id != channel_id or channel.revision != current.revision + 1:
                msg = "a channel update must keep the id and increase the revision by one"
                raise AssertionError(msg)
            self._check(channel)
            await self._publish([(self.channels, channel_id, channel)])
            saved = self.channel(channel_id)
            line.update(revision=saved.revision, enabled=saved.enabled)
            return saved

    async def delete_channel(self, channel_id: str, *, revision: int | None = None) -> None:
        """Tombstone the channel and its filters, atomically (one transaction)."""
        async with self._write("channel", "delete", channel_id=channel_id) as line:
            current = self.channel(channel_id)
            if revision is not None and current.revision != revision:
                raise RevisionConflict(
                    "channel", channel_id, sent=revision, current=current.revision
                )
            await self._publish(
                [(self.channels, channel_id, None), (self.filters, channel_id, None)]
            )
            line.update(revision=current.revision)

    async def rename_campaign(self, campaign_id: str, name: str) -> Campaign:
        async with self._write("campaign", "rename", campaign_id=campaign_id):
            current = self.campaign(campaign_id)
            renamed = current.model_copy(update={"name": name, "updated_at": utcnow()})
            await self._publish([(self.campaigns, campaign_id, renamed)])
            return self.campaign(campaign_id)

    async def delete_campaign(self, campaign_id: str) -> None:
        """Tombstone the campaign, unless a channel uses it as default or filter target."""
        async with self._write("campaign", "delete", campaign_id=campaign_id) as line:
            self.campaign(campaign_id)
            users = self.campaign_users(campaign_id)
            if users:
                line.update(used_by=len(users))
                raise CampaignInUse(campaign_id, users)
            await self._publish([(self.campaigns, campaign_id, None)])

    def campaign_users(self, campaign_id: str) -> list[dict[str, object]]:
        """The channels that use the campaign, and how (default / filter ids)."""
        users: list[dict[str, object]] = []
        for channel in sorted(self.channels.values(), key=lambda c: (c.name.casefold(), c.id)):
            filters = self.filters.get(channel.id)
            targets = (
                [f.id for f in filters.filters if f.campaign_id == campaign_id] if filters else []
            )
            if channel.default_campaign_id == campaign_id or targets:
                users.append(
                    {
                        "id": channel.id,
                        "name": channel.name,
                        "default": channel.default_campaign_id == campaign_id,
                        "filter_ids": targets,
                    }
                )
        return users

    async def update_filters(
        self,
        channel_id: str,
        *,
        revision: int | None,
        change: Callable[[list[Filter]], list[Filter]],
        focus: str | None = None,
    ) -> ChannelFilters:
        """Replace the channel's filter list by ``change(current list)``.

        ``revision`` (0 = the channel has no list yet) must be the current one when given.
        Problems name ``filters.<index>.<field>``, or the body's own fields for the filter
        whose id is ``focus`` (a single-filter request).
        """
        async with self._write("filters", "update", channel_id=channel_id) as line:
            self.channel(channel_id)
            current = self.filters.get(channel_id)
            current_revision = current.revision if current else 0
            if revision is not None and revision != current_revision:
                raise RevisionConflict(
                    "filter list of channel",
                    channel_id,
                    sent=revision,
                    current=current_revision,
                )
            rules = change(list(current.filters) if current else [])
            problems = filter_list_problems(
                rules, focus=focus, campaign_exists=self.campaigns.__contains__
            )
            if problems:
                raise InvalidInput(*problems)
            updated = ChannelFilters(
                channel_id=channel_id, filters=rules, revision=current_revision + 1
            )
            await self._publish([(self.filters, channel_id, updated)])
            saved = self.filters.get(channel_id)
            assert saved is not None
            line.update(revision=saved.revision, filters=len(saved.filters))
            return saved

    async def set_enabled(self, channel_id: str, *, enabled: bool) -> ChannelConfig:
        """Switch a channel on or off (bulk action); the current revision, whatever it is."""
        current = self.channel(channel_id)

        def change(channel: ChannelConfig) -> ChannelConfig:
            return channel.model_copy(
                update={
                    "enabled": enabled,
                    "revision": channel.revision + 1,
                    "updated_at": utcnow(),
                }
            )

        return await self.update_channel(channel_id, revision=current.revision, change=change)

    async def record_status(self, statuses: Sequence[ChannelStatus]) -> None:
        """Publish health reports (the outcome of a validation) on email.channel-status."""
        async with self._write("status", "validate"):
            await self._publish([(self.statuses, s.key, s) for s in statuses])

    async def create_token(self, token: ApiToken) -> ApiToken:
        async with self._write("token", "create", token_id=token.id) as line:
            if token.id in self.tokens:
                raise AlreadyExists(f"token {token.id!r} already exists")
            await self._publish([(self.tokens, token.id, token)])
            line.update(role=token.role, created_by=token.created_by)
            saved = self.tokens.get(token.id)
            assert saved is not None
            return saved

    async def revoke_token(self, token_id: str) -> None:
        async with self._write("token", "revoke", token_id=token_id):
            if token_id not in self.tokens:
                raise NotFound(f"token {token_id!r} does not exist")
            await self._publish([(self.tokens, token_id, None)])

    def token(self, token_id: str) -> ApiToken | None:
        """The stored token, or None; 503 while the tokens topic is not read to its end."""
        if not self.ready:
            raise Unavailable(self.not_ready_reason or "not ready")
        return self.tokens.get(token_id)

    # --- internals ---

    def _check(self, channel: ChannelConfig) -> None:
        problems = channel_problems(channel, campaign_exists=self.campaigns.__contains__)
        if problems:
            raise InvalidInput(*problems)

    @contextlib.asynccontextmanager
    async def _write(
        self, entity: str, operation: str, **ids: str
    ) -> AsyncIterator[dict[str, object]]:
        """Serialise writes; log one canonical line and count the outcome."""
        line: dict[str, object] = {}
        outcome = "error"
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(**ids):
            try:
                async with self._lock:
                    await self._settle_unread()
                    yield line
                outcome = "ok"
            except ConfigApiError as exc:
                outcome = exc.outcome
                line["error"] = str(exc)
                raise
            finally:
                elapsed = time.perf_counter() - started
                WRITES.labels(entity, operation, outcome).inc()
                WRITE_SECONDS.labels(entity, operation).observe(elapsed)
                # A client's mistake is routine (info); a system fault needs a look (error).
                emit = log.info if outcome in _CLIENT_OUTCOMES else log.error
                emit(
                    f"{entity} {operation}",
                    outcome=outcome,
                    duration_ms=round(elapsed * 1000, 1),
                    **line,
                )

    async def _publish(self, writes: Sequence[Write]) -> None:
        """Publish in one transaction, then wait until every view has read its record back."""
        if self._fenced:
            raise WriterFenced(self.not_ready_reason or "fenced")
        try:
            async with self._producer.raw.transaction():
                acks = [
                    (view, await self._producer.publish(view.topic, key, value))
                    for view, key, value in writes
                ]
        except (KafkaError, PipelineError) as exc:
            raise self._translate(exc) from exc
        self._unread = [(view, ack.partition, ack.offset) for view, ack in acks]
        try:
            await self._settle_unread()
        except Unavailable as exc:
            raise Unavailable(
                f"saved, but not read back within {self._write_timeout_s}s; reload before "
                "changing it again"
            ) from exc.__cause__

    async def _settle_unread(self) -> None:
        """Wait until the views hold every record written so far.

        A write whose read-back timed out stays pending here, so the next write (under the
        same lock) never checks a revision against a view that misses the previous write.
        """
        while self._unread:
            view, partition, offset = self._unread[0]
            try:
                await view.wait_for(partition, offset, timeout=self._write_timeout_s)
            except TransientError as exc:
                raise Unavailable(
                    "the previous write is not read back yet; nothing was saved, try again"
                ) from exc
            self._unread.pop(0)

    def _translate(self, exc: BaseException) -> ConfigApiError:
        """The one place Kafka's errors become API errors."""
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ProducerFenced):
                self._fenced = True
                log.error("producer fenced: another config-api instance took over the writes")
                return WriterFenced(
                    "another config-api instance took over writing the config; "
                    "nothing was saved, send the request again"
                )
            cause = cause.__cause__
        return Unavailable(f"Kafka did not take the write, nothing was saved: {exc}")
