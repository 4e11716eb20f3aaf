"""Validate: contact a channel's servers with the fetcher's and sender's own code, bounded.

Inbound and outbound are probed at the same time (``fetcher.probe``, ``sender.probe`` —
imported, not re-implemented), under one deadline (``CONFIG_API_VALIDATE_TIMEOUT_S``, 60 s by
default): a server that never answers ends as a failed step saying so, never as a hung
request. The host policy (``EMAIL_CHANNELS_ALLOWED_HOSTS``) applies as it does in the fetcher
and sender. For a saved channel the outcome is recorded on ``email.channel-status`` (one
report per direction), which is what makes the channel list show it Active.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from email_channels.events import ChannelState, ChannelStatus, utcnow
from email_channels.validation import StepRecorder, combine
from fetcher.probe import probe_inbound
from sender.probe import probe_outbound

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from config_api.settings import ConfigApiSettings
    from email_channels.events import ChannelConfig
    from email_channels.secretbox import SecretBox
    from email_channels.validation import Direction, DirectionReport, ValidationReport

log = structlog.get_logger(__name__)

REPORTED_BY = "config-api/validate"
COMMAND_TIMEOUT_S = 30.0


async def validate(
    channel: ChannelConfig, *, settings: ConfigApiSettings, box: SecretBox
) -> ValidationReport:
    """Probe every configured direction of ``channel``; never raises for a server's fault."""
    bound = settings.validate_timeout_s
    deadline = asyncio.get_running_loop().time() + bound
    policy = settings.common.host_policy()
    ca_file = settings.common.ca_file
    per_command = min(COMMAND_TIMEOUT_S, bound)
    started = time.perf_counter()

    async def run(
        direction: Direction,
        kind: str,
        probe: Callable[[StepRecorder], Awaitable[None]],
    ) -> DirectionReport:
        recorder = StepRecorder(direction, kind)
        try:
            async with asyncio.timeout_at(deadline):
                await probe(recorder)
        except TimeoutError:
            recorder.timed_out(bound)
        except Exception as exc:
            recorder.failed_outside_steps(exc)
        return recorder.report()

    inbound_task = outbound_task = None
    async with asyncio.TaskGroup() as group:
        if channel.inbound is not None:
            inbound_task = group.create_task(
                run(
                    "inbound",
                    channel.inbound.kind,
                    lambda recorder: probe_inbound(
                        channel,
                        recorder,
                        secret_box=box,
                        host_policy=policy,
                        ca_file=ca_file,
                        command_timeout_s=per_command,
                    ),
                )
            )
        if channel.outbound is not None:
            outbound_task = group.create_task(
                run(
                    "outbound",
                    channel.outbound.kind,
                    lambda recorder: probe_outbound(
                        channel,
                        recorder,
                        secret_box=box,
                        host_policy=policy,
                        ca_file=ca_file,
                        timeout_s=per_command,
                    ),
                )
            )
    report = combine(
        inbound_task.result() if inbound_task else None,
        outbound_task.result() if outbound_task else None,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    log.info(
        "channel validated",
        channel_id=channel.id,
        ok=report.ok,
        failing_step=report.failing_step,
        duration_ms=report.elapsed_ms,
    )
    return report


def status_reports(channel_id: str, report: ValidationReport) -> list[ChannelStatus]:
    """The validation's outcome as health reports, one per probed direction."""
    now = utcnow()
    return [
        ChannelStatus(
            channel_id=channel_id,
            direction=direction.direction,
            state=ChannelState.ACTIVE if direction.ok else ChannelState.INACTIVE,
            reason=None if direction.ok else direction.message,
            step=direction.failing_step,
            reported_by=REPORTED_BY,
            at=now,
            last_success_at=now if direction.ok else None,
        )
        for direction in (report.inbound, report.outbound)
        if direction is not None
    ]
