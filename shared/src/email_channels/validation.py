"""Validation reports: what "Validate" found, step by step (design.md §2, "Validate").

A probe (``fetcher.probe`` for inbound, ``sender.probe`` for outbound) runs the same connect
code its service uses and records each step — ``dns``, ``tcp``, ``tls``, ``auth``,
``folder:<name>``, ``mail_from`` ... — with its outcome and time in a :class:`StepRecorder`.
The first failing step ends the probe; its message says what to fix. The caller bounds the
whole run (60 s by default) and, when the bound hits, :meth:`StepRecorder.timed_out` names the
step that was still waiting.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from collections.abc import Iterator

Direction = Literal["inbound", "outbound"]


class ValidationStep(BaseModel):
    """One step of a probe."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="dns, tcp, tls, auth, folder:<name>, mail_from, ...")
    ok: bool
    elapsed_ms: float
    message: str


class DirectionReport(BaseModel):
    """The probe of one direction (inbound or outbound) of a channel."""

    model_config = ConfigDict(frozen=True)

    direction: Direction
    kind: str = Field(description="imap, pop3, graph, smtp")
    ok: bool
    failing_step: str | None = None
    message: str
    elapsed_ms: float
    steps: list[ValidationStep]


class ValidationReport(BaseModel):
    """Validate's answer: each configured direction, and the overall outcome."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    failing_step: str | None = Field(
        default=None, description="'<direction>.<step>' of the first failure, e.g. inbound.auth"
    )
    elapsed_ms: float
    inbound: DirectionReport | None = None
    outbound: DirectionReport | None = None
    recorded: bool = Field(
        default=False, description="the outcome was recorded on email.channel-status"
    )


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


class StepRecorder:
    """Collects the steps of one probe.

    ``with recorder.step("tcp", "connected"):`` times the block; an exception records the
    step as failed — named by the error's own ``step`` attribute when it has one (the
    services' errors say where they failed) — and propagates.
    """

    def __init__(self, direction: Direction, kind: str) -> None:
        self.direction: Direction = direction
        self.kind = kind
        self.steps: list[ValidationStep] = []
        self._current: tuple[str, float] | None = None
        self._started = time.perf_counter()

    @contextmanager
    def step(self, name: str, ok_message: str = "ok") -> Iterator[None]:
        started = time.perf_counter()
        self._current = (name, started)
        try:
            yield
        except Exception as exc:
            # The error's own step names finer where the block spans several (tcp/tls/auth in
            # a login); a block already named more precisely (folder:INBOX) keeps its name.
            own: str | None = getattr(exc, "step", None)
            failed = own if own and name.partition(":")[0] != own else name
            message = str(exc) or type(exc).__name__
            self.steps.append(
                ValidationStep(name=failed, ok=False, elapsed_ms=_ms(started), message=message)
            )
            self._current = None
            raise
        self._current = None
        self.steps.append(
            ValidationStep(name=name, ok=True, elapsed_ms=_ms(started), message=ok_message)
        )

    def timed_out(self, bound_s: float) -> None:
        """The caller's bound hit: the step in progress fails, saying so."""
        name, started = self._current or ("timeout", self._started)
        self._current = None
        self.steps.append(
            ValidationStep(
                name=name,
                ok=False,
                elapsed_ms=_ms(started),
                message=(
                    f"no answer within the validation bound of {bound_s:g} s: is a firewall "
                    "dropping the connection, or is the port wrong?"
                ),
            )
        )

    def failed_outside_steps(self, exc: BaseException) -> None:
        """An error no step caught (a bug, or a setting that cannot even be tried)."""
        if self.steps and not self.steps[-1].ok:
            return
        self.steps.append(
            ValidationStep(
                name=getattr(exc, "step", None) or "config",
                ok=False,
                elapsed_ms=0.0,
                message=str(exc) or type(exc).__name__,
            )
        )

    def report(self) -> DirectionReport:
        failing = next((step for step in self.steps if not step.ok), None)
        return DirectionReport(
            direction=self.direction,
            kind=self.kind,
            ok=failing is None,
            failing_step=failing.name if failing else None,
            message=failing.message if failing else "every step passed",
            elapsed_ms=_ms(self._started),
            steps=list(self.steps),
        )


def combine(
    inbound: DirectionReport | None, outbound: DirectionReport | None, *, elapsed_ms: float
) -> ValidationReport:
    failing = next((r for r in (inbound, outbound) if r is not None and not r.ok), None)
    return ValidationReport(
        ok=failing is None and (inbound is not None or outbound is not None),
        failing_step=f"{failing.direction}.{failing.failing_step}" if failing else None,
        elapsed_ms=elapsed_ms,
        inbound=inbound,
        outbound=outbound,
    )
