"""``email-sender`` / ``python -m sender``: run until SIGTERM or SIGINT, then stop cleanly."""

from __future__ import annotations

import asyncio
import signal

import structlog
from prometheus_client import start_http_server

from email_channels.errors import PipelineError
from email_channels.logconfig import configure_logging
from sender.app import SenderApp
from sender.settings import SenderSettings

log = structlog.get_logger(__name__)


def main() -> None:
    settings = SenderSettings()
    common = settings.common
    configure_logging(service="email-sender", level=common.log_level, fmt=common.log_format)
    if common.metrics_port is not None:
        start_http_server(common.metrics_port)
    try:
        asyncio.run(_serve(settings))
    except PipelineError as exc:
        log.error("sender stopped", error=str(exc), error_kind=exc.kind)
        raise SystemExit(1) from exc


async def _serve(settings: SenderSettings) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await SenderApp(settings).run(stopping)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("sender stopped")


if __name__ == "__main__":
    main()
