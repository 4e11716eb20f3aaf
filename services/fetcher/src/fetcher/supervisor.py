"""Channel id -> running worker: start, restart on a config change, stop on disable/delete/revoke.

The supervisor holds the desired state given by :mod:`fetcher.ownership` (one config per owned
channel) and keeps exactly one worker per fetchable channel. A worker is always stopped — its
in-flight message finished, its mailbox closed — before its successor starts, so a channel is
never fetched twice at once by this process; the successor continues from the cursor the
stopped worker reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from fetcher.metrics import WORKERS

RESTART_DELAY_S = 5.0
"""Pause before restarting a worker that crashed, so a persistent bug cannot spin."""

if TYPE_CHECKING:
    from email_channels.events import ChannelConfig, FetchCursor

log = structlog.get_logger(__name__)


class Worker(Protocol):
    channel: ChannelConfig

    @property
    def cursor(self) -> FetchCursor: ...

    async def run(self) -> None: ...

    def stop(self) -> None: ...


WorkerFactory = Callable[["ChannelConfig", "FetchCursor | None"], Worker]


@dataclass
class _Running:
    worker: Worker
    task: asyncio.Task[None]
    partition: int


class Supervisor:
    def __init__(
        self,
        workers: WorkerFactory,
        *,
        fetchable: Callable[[ChannelConfig], bool],
        stop_timeout: float = 20.0,
    ) -> None:
        self._workers = workers
        self._fetchable = fetchable
        self._stop_timeout = stop_timeout
        self._running: dict[str, _Running] = {}
        self._cursors: dict[str, FetchCursor] = {}
        self._partition_of: dict[str, int] = {}
        self._skipped: set[tuple[str, str]] = set()
        self._restarts: dict[str, asyncio.TimerHandle] = {}

    @property
    def running(self) -> dict[str, ChannelConfig]:
        """Channel id -> the config its worker runs with."""
        return {channel_id: run.worker.channel for channel_id, run in self._running.items()}

    def cursor(self, channel_id: str) -> FetchCursor | None:
        """The latest cursor known for a channel (its worker's, else the one loaded)."""
        run = self._running.get(channel_id)
        return run.worker.cursor if run is not None else self._cursors.get(channel_id)

    def load_cursors(self, cursors: Mapping[str, FetchCursor]) -> None:
        """Cursors read from email.fetch-cursors for newly assigned partitions (they win)."""
        self._cursors.update(cursors)

    async def apply(self, partition: int, channel_id: str, config: ChannelConfig | None) -> None:
        """Make the channel's worker match ``config`` (None: deleted or undecodable)."""
        self._partition_of[channel_id] = partition
        self._cancel_restart(channel_id)  # the new config decides what runs
        wanted = config if config is not None and self._wants(config) else None
        current = self._running.get(channel_id)
        if (
            current is not None
            and wanted is not None
            and _fetch_settings(current.worker.channel) == _fetch_settings(wanted)
        ):
            return  # e.g. only the name or the outbound settings changed: keep the session
        if current is not None:
            reason = "deleted" if config is None else "disabled" if wanted is None else "changed"
            log.info("stopping channel worker", channel_id=channel_id, reason=reason)
            await self._stop([channel_id])
        if wanted is not None:
            self._start(partition, wanted)

    async def release(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: stop their workers and forget their cursors (the new owner's now)."""
        released = set(partitions)
        await self._stop([cid for cid, run in self._running.items() if run.partition in released])
        for channel_id in [c for c, p in self._partition_of.items() if p in released]:
            self._cancel_restart(channel_id)
            self._cursors.pop(channel_id, None)
            self._partition_of.pop(channel_id, None)

    async def stop_all(self) -> None:
        await self._stop(list(self._running) + list(self._restarts))

    # --- internals ---

    def _wants(self, config: ChannelConfig) -> bool:
        if not config.enabled or config.inbound is None:
            return False
        if self._fetchable(config):
            return True
        key = (config.id, config.inbound.kind)
        if key not in self._skipped:  # say it once per channel and kind, not on every rebalance
            self._skipped.add(key)
            log.info(
                "channel not fetched: inbound kind not supported by this release",
                channel_id=config.id,
                inbound_kind=config.inbound.kind,
            )
        return False

    def _start(self, partition: int, config: ChannelConfig) -> None:
        worker = self._workers(config, self._cursors.get(config.id))
        task = asyncio.create_task(worker.run(), name=f"channel:{config.id}")
        run = _Running(worker, task, partition)
        self._running[config.id] = run
        task.add_done_callback(lambda done: self._ended(config.id, run, done))
        WORKERS.set(len(self._running))

    def _ended(self, channel_id: str, run: _Running, task: asyncio.Task[None]) -> None:
        """A worker that ends on its own (a bug: run() handles every failure) is restarted."""
        if self._running.get(channel_id) is not run or task.cancelled():
            return  # stopped on purpose
        error = task.exception()
        if error is None:
            return
        log.error(
            "channel worker crashed; restarting it",
            channel_id=channel_id,
            delay_s=RESTART_DELAY_S,
            exc_info=error,
        )
        self._running.pop(channel_id)
        WORKERS.set(len(self._running))
        self._cursors[channel_id] = run.worker.cursor
        self._restarts[channel_id] = asyncio.get_running_loop().call_later(
            RESTART_DELAY_S, self._restart, run
        )

    def _restart(self, run: _Running) -> None:
        channel = run.worker.channel
        self._restarts.pop(channel.id, None)
        if channel.id not in self._running:
            self._start(run.partition, channel)

    def _cancel_restart(self, channel_id: str) -> None:
        handle = self._restarts.pop(channel_id, None)
        if handle is not None:
            handle.cancel()

    async def _stop(self, channel_ids: list[str]) -> None:
        """Stop workers concurrently; cancel those that outlive the stop timeout."""
        for channel_id in channel_ids:
            self._cancel_restart(channel_id)
        runs = {cid: self._running.pop(cid) for cid in channel_ids if cid in self._running}
        WORKERS.set(len(self._running))
        if not runs:
            return
        for run in runs.values():
            run.worker.stop()
        tasks = [run.task for run in runs.values()]
        _, late = await asyncio.wait(tasks, timeout=self._stop_timeout)
        for task in late:
            log.warning("channel worker did not stop in time; cancelled", task=task.get_name())
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for (channel_id, run), result in zip(runs.items(), results, strict=True):
            if isinstance(result, Exception):
                log.error("channel worker crashed", channel_id=channel_id, exc_info=result)
            self._cursors[channel_id] = run.worker.cursor


def _fetch_settings(config: ChannelConfig) -> tuple[object, ...]:
    """What a worker fetches with; a change of anything else does not restart it."""
    return (config.inbound, config.email_address, config.sync_recipient_only)
