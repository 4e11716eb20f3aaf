"""The consume loop's error policy: retry what is retriable, dead-letter the rest."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from email_channels.consume import RetryPolicy, _Stopping, handle_with_policy, settle
from email_channels.errors import PermanentError, TransientError


@dataclass
class FakeRecord:
    topic: str = "email.outbound"
    partition: int = 0
    offset: int = 3
    key: bytes | None = b"k"
    value: bytes | None = b"{}"
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class FakeDeadLetters:
    sent: list[tuple[Any, BaseException, int]] = field(default_factory=list)

    async def send(self, record: Any, error: BaseException, *, attempts: int = 1) -> None:
        self.sent.append((record, error, attempts))


FAST = RetryPolicy(attempts=3, first_backoff=0.001, max_backoff=0.001)


async def _run(handler: Any, dead: FakeDeadLetters, stopping: asyncio.Event | None = None) -> None:
    await handle_with_policy(
        FakeRecord(),
        handler,
        dead_letters=dead,
        policy=FAST,  # type: ignore[arg-type]
        stopping=stopping or asyncio.Event(),
        stage="test",
    )


async def test_transient_errors_are_retried_until_success() -> None:
    calls = 0

    async def handler(_: Any) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("try again")

    dead = FakeDeadLetters()
    await _run(handler, dead)
    assert calls == 3
    assert dead.sent == []


async def test_transient_errors_that_persist_are_dead_lettered_as_retriable() -> None:
    async def handler(_: Any) -> None:
        raise TransientError("still down")

    dead = FakeDeadLetters()
    await _run(handler, dead)
    [(_, error, attempts)] = dead.sent
    assert error.retriable
    assert attempts == FAST.attempts


async def test_permanent_errors_are_dead_lettered_at_once() -> None:
    calls = 0

    async def handler(_: Any) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("bad input")

    dead = FakeDeadLetters()
    await _run(handler, dead)
    assert calls == 1
    assert [attempts for *_, attempts in dead.sent] == [1]


async def test_unexpected_exceptions_are_dead_lettered_not_dropped() -> None:
    async def handler(_: Any) -> None:
        raise KeyError("bug")

    dead = FakeDeadLetters()
    await _run(handler, dead)
    assert isinstance(dead.sent[0][1], KeyError)


async def test_stopping_during_a_retry_leaves_the_record_for_the_next_owner() -> None:
    """Shutdown in the middle of a backoff neither dead-letters nor marks the record done."""
    stopping = asyncio.Event()
    slow = RetryPolicy(attempts=5, first_backoff=10, max_backoff=10)

    async def handler(_: Any) -> None:
        stopping.set()
        raise TransientError("down")

    dead = FakeDeadLetters()
    with pytest.raises(_Stopping):
        await handle_with_policy(
            FakeRecord(),
            handler,
            dead_letters=dead,
            policy=slow,  # type: ignore[arg-type]
            stopping=stopping,
            stage="test",
        )
    assert dead.sent == []


def test_backoff_is_capped_and_exponential() -> None:
    policy = RetryPolicy(attempts=10, first_backoff=0.5, max_backoff=4)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1, 2, 4, 4]


async def test_a_dead_letter_that_cannot_be_published_is_retried() -> None:
    """The record is settled only once its dead letter is acknowledged."""

    class FlakyDeadLetters(FakeDeadLetters):
        failures = 2

        async def send(self, record: Any, error: BaseException, *, attempts: int = 1) -> None:
            if self.failures:
                self.failures -= 1
                raise TransientError("dlq unavailable")
            await super().send(record, error, attempts=attempts)

    async def handler(_: Any) -> None:
        raise PermanentError("bad input")

    dead = FlakyDeadLetters()
    await _run(handler, dead)
    assert dead.failures == 0
    assert [str(error) for _, error, _ in dead.sent] == ["bad input"]


async def test_settle_passes_the_attempt_number_and_calls_the_give_up_hook_once() -> None:
    """The handler sees attempts 1..n; the give-up hook runs once, before the dead letter."""
    seen: list[int] = []
    order: list[str] = []

    async def handler(_: Any, attempt: int) -> None:
        seen.append(attempt)
        raise TransientError("still down")

    class OrderedDead(FakeDeadLetters):
        async def send(self, record: Any, error: BaseException, *, attempts: int = 1) -> None:
            order.append("dead letter")
            await super().send(record, error, attempts=attempts)

    async def give_up(_record: Any, error: BaseException, attempts: int) -> None:
        order.append(f"give up after {attempts}: {error}")

    dead = OrderedDead()
    await settle(
        FakeRecord(),
        handler,
        dead_letters=dead,  # type: ignore[arg-type]
        policy=FAST,
        stopping=asyncio.Event(),
        stage="test",
        give_up=give_up,
    )
    assert seen == [1, 2, 3]
    assert order == ["give up after 3: still down", "dead letter"]


async def test_a_failing_give_up_hook_is_retried_and_the_dead_letter_sent_once() -> None:
    """A hook that fails (Kafka hiccup) runs again; the record is dead-lettered exactly once."""
    calls = 0

    async def handler(_: Any, _attempt: int) -> None:
        raise PermanentError("bad")

    async def give_up(_record: Any, _error: BaseException, _attempts: int) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("broker not available")

    dead = FakeDeadLetters()
    await settle(
        FakeRecord(),
        handler,
        dead_letters=dead,  # type: ignore[arg-type]
        policy=FAST,
        stopping=asyncio.Event(),
        stage="test",
        give_up=give_up,
    )
    assert calls == 3
    assert len(dead.sent) == 1
