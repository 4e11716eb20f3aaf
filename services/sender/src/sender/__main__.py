"""``email-sender`` / ``python -m sender``: run until SIGTERM or SIGINT, then stop cleanly."""

from __future__ import annotations

import asyncio

import structlog

from email_channels.errors import PipelineError
from email_channels.service import (
    exit_with_help_if_asked,
    health_server,
    run_until_signalled,
    start_observability,
)
from sender.app import SenderApp
from sender.settings import SenderSettings

log = structlog.get_logger(__name__)


def main() -> None:
    exit_with_help_if_asked("sender", __doc__ or "", SenderSettings)
    settings = SenderSettings()
    start_observability("sender", settings.common)
    try:
        app = SenderApp(settings)
        health = health_server(settings.common, app.not_ready_reason)
        asyncio.run(run_until_signalled(app.run, health=health))
    except PipelineError as exc:
        log.error("sender stopped", error=str(exc), error_kind=exc.kind)
        raise SystemExit(1) from exc
    log.info("sender stopped")


if __name__ == "__main__":
    main()
