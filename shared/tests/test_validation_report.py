"""Validation reports: steps timed and named, the first failure named, a timeout blamed on the
step that was waiting."""

from __future__ import annotations

import asyncio

import pytest

from email_channels.errors import ChannelMisconfigured
from email_channels.validation import StepRecorder, combine


def test_failure_is_named_by_the_errors_own_step() -> None:
    """A block spanning tcp/tls/auth is reported under the step the error names."""
    recorder = StepRecorder("inbound", "imap")
    with recorder.step("dns"):
        pass
    with pytest.raises(ChannelMisconfigured), recorder.step("login"):
        raise ChannelMisconfigured("authentication failed", step="auth")

    report = recorder.report()
    assert [(s.name, s.ok) for s in report.steps] == [("dns", True), ("auth", False)]
    assert (report.ok, report.failing_step, report.message) == (
        False,
        "auth",
        "authentication failed",
    )


def test_precise_step_name_is_kept() -> None:
    """folder:Archive stays folder:Archive when the error only says 'folder'."""
    recorder = StepRecorder("inbound", "imap")
    with pytest.raises(ChannelMisconfigured), recorder.step("folder:Archive"):
        raise ChannelMisconfigured("no such folder", step="folder")

    assert recorder.report().failing_step == "folder:Archive"


async def test_timeout_blames_the_waiting_step() -> None:
    """When the caller's bound hits, the step in progress fails, saying it got no answer."""
    recorder = StepRecorder("outbound", "smtp")

    async def probe() -> None:
        with recorder.step("dns"):
            pass
        with recorder.step("tcp"):
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await probe()
    recorder.timed_out(0.05)

    report = recorder.report()
    assert report.failing_step == "tcp"
    assert "no answer within" in report.message


def test_combined_report_names_direction_and_step() -> None:
    """The overall report is ok only if every probed direction is, and names the first failure."""
    good = StepRecorder("inbound", "imap")
    with good.step("dns"):
        pass
    bad = StepRecorder("outbound", "smtp")
    with pytest.raises(ChannelMisconfigured), bad.step("auth"):
        raise ChannelMisconfigured("535 no", step="auth")

    report = combine(good.report(), bad.report(), elapsed_ms=1.0)

    assert (report.ok, report.failing_step) == (False, "outbound.auth")
    assert combine(good.report(), None, elapsed_ms=1.0).ok
    assert not combine(None, None, elapsed_ms=0.0).ok
