"""The supervisor keeps one worker per fetchable owned channel, and hands cursors over."""

from __future__ import annotations

import asyncio

import pytest

from email_channels.events import ChannelConfig, FetchCursor, FolderCursor
from fetcher.supervisor import Supervisor


class FakeWorker:
    def __init__(self, channel: ChannelConfig, cursor: FetchCursor | None, log: list[str]) -> None:
        self.channel = channel
        self.started_with = cursor
        self._cursor = cursor or FetchCursor(channel_id=channel.id)
        self._stop = asyncio.Event()
        self._log = log
        self._error: Exception | None = None

    @property
    def cursor(self) -> FetchCursor:
        return self._cursor

    def took(self, uid: int) -> None:
        self._cursor = FetchCursor(
            channel_id=self.channel.id, folders={"INBOX": FolderCursor(uidvalidity=1, last_uid=uid)}
        )

    async def run(self) -> None:
        self._log.append(f"start {self.channel.id} r{self.channel.revision}")
        await self._stop.wait()
        if self._error is not None:
            raise self._error
        self._log.append(f"stop {self.channel.id} r{self.channel.revision}")

    def crash(self, error: Exception) -> None:
        self._error = error
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()


def channel(
    channel_id: str = "a",
    *,
    revision: int = 1,
    enabled: bool = True,
    port: int = 993,
    name: str | None = None,
) -> ChannelConfig:
    return ChannelConfig.model_validate(
        {
            "id": channel_id,
            "name": name or channel_id,
            "enabled": enabled,
            "revision": revision,
            "inbound": {
                "kind": "imap",
                "host": "mail.example.com",
                "port": port,
                "username": "u",
                "password": "v1:k:AAAA",
            },
        }
    )


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def made() -> list[FakeWorker]:
    return []


@pytest.fixture
def supervisor(events: list[str], made: list[FakeWorker]) -> Supervisor:
    def factory(config: ChannelConfig, cursor: FetchCursor | None) -> FakeWorker:
        worker = FakeWorker(config, cursor, events)
        made.append(worker)
        return worker

    return Supervisor(
        factory, fetchable=lambda c: c.inbound is not None and c.inbound.kind == "imap"
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_enabled_channel_gets_a_worker_disabled_one_does_not(supervisor, events):
    await supervisor.apply(0, "a", channel("a"))
    await supervisor.apply(0, "b", channel("b", enabled=False))
    await settle()
    assert set(supervisor.running) == {"a"}
    assert events == ["start a r1"]
    await supervisor.stop_all()


async def test_unsupported_inbound_kind_is_not_fetched(supervisor):
    graph = ChannelConfig.model_validate(
        {
            "id": "g",
            "name": "g",
            "enabled": True,
            "inbound": {
                "kind": "graph",
                "tenant_id": "t",
                "client_id": "c",
                "client_secret": "v1:k:AAAA",
                "mailbox": "m@example.com",
            },
        }
    )
    await supervisor.apply(0, "g", graph)
    assert supervisor.running == {}


async def test_new_revision_restarts_the_worker_after_the_old_one_stopped(supervisor, events, made):
    """The successor starts only once the old worker returned, and continues its cursor."""
    await supervisor.apply(0, "a", channel("a"))
    await settle()
    made[0].took(5)
    await supervisor.apply(0, "a", channel("a", revision=2, port=143))
    await settle()
    assert events == ["start a r1", "stop a r1", "start a r2"]
    assert made[1].started_with == made[0].cursor
    await supervisor.stop_all()


async def test_a_change_that_does_not_touch_fetching_keeps_the_session(supervisor, events):
    """Renaming a channel (or changing its outbound settings) does not drop the IMAP session."""
    await supervisor.apply(0, "a", channel("a"))
    await supervisor.apply(0, "a", channel("a", revision=2, name="Renamed"))
    await settle()
    assert events == ["start a r1"]
    await supervisor.stop_all()


async def test_a_worker_that_crashes_is_restarted(supervisor, events, made, monkeypatch):
    """run() handles every failure; if a bug still ends it, the channel is not left unfetched:
    a new worker starts after a pause, from the crashed worker's cursor."""
    monkeypatch.setattr("fetcher.supervisor.RESTART_DELAY_S", 0.01)
    await supervisor.apply(0, "a", channel("a"))
    await settle()
    made[0].took(7)
    made[0].crash(RuntimeError("bug"))
    for _ in range(500):  # up to 5 s: a loaded machine (parallel test workers) is slow to wake
        if len(made) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(made) == 2
    assert made[1].started_with == made[0].cursor
    assert set(supervisor.running) == {"a"}
    await supervisor.stop_all()


async def test_same_config_again_changes_nothing(supervisor, events):
    """Re-reading the topic after a rebalance yields the same records: no restart."""
    config = channel("a")
    await supervisor.apply(0, "a", config)
    await supervisor.apply(0, "a", ChannelConfig.model_validate_json(config.model_dump_json()))
    await settle()
    assert events == ["start a r1"]
    await supervisor.stop_all()


async def test_tombstone_and_disable_stop_the_worker(supervisor, events):
    await supervisor.apply(0, "a", channel("a"))
    await supervisor.apply(0, "b", channel("b"))
    await settle()
    await supervisor.apply(0, "a", None)
    await supervisor.apply(0, "b", channel("b", revision=2, enabled=False))
    assert supervisor.running == {}
    assert sorted(events) == ["start a r1", "start b r1", "stop a r1", "stop b r1"]


async def test_loaded_cursor_is_where_a_worker_starts(supervisor, made):
    cursor = FetchCursor(channel_id="a", folders={"INBOX": FolderCursor(uidvalidity=3)})
    supervisor.load_cursors({"a": cursor})
    await supervisor.apply(1, "a", channel("a"))
    assert made[0].started_with == cursor
    await supervisor.stop_all()


async def test_release_stops_only_the_revoked_partitions_and_forgets_their_cursors(
    supervisor, made
):
    supervisor.load_cursors({"a": FetchCursor(channel_id="a"), "b": FetchCursor(channel_id="b")})
    await supervisor.apply(0, "a", channel("a"))
    await supervisor.apply(1, "b", channel("b"))
    await settle()
    await supervisor.release({0})
    assert set(supervisor.running) == {"b"}
    assert supervisor.cursor("a") is None  # the next owner's now
    assert supervisor.cursor("b") is not None
    await supervisor.stop_all()


async def test_worker_that_does_not_stop_in_time_is_cancelled(events):
    class Stubborn(FakeWorker):
        def stop(self) -> None:  # ignores the request
            pass

    supervisor = Supervisor(
        lambda config, cursor: Stubborn(config, cursor, events),
        fetchable=lambda c: True,
        stop_timeout=0.05,
    )
    await supervisor.apply(0, "a", channel("a"))
    await settle()
    async with asyncio.timeout(1):
        await supervisor.stop_all()
    assert supervisor.running == {}
