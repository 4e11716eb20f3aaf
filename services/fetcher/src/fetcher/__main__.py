"""``email-fetcher`` / ``python -m fetcher``: run until SIGTERM or SIGINT, then stop cleanly.

On the first signal the fetcher finishes each channel's in-flight message, stores its cursor,
logs out of the mailboxes and leaves the consumer group (its channels move to the other
fetchers at once). A second signal ends the process the hard way.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import structlog
from prometheus_client import start_http_server

from email_channels.errors import PipelineError
from email_channels.logconfig import configure_logging
from fetcher.app import FetcherApp
from fetcher.settings import FetcherSettings

log = structlog.get_logger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def main() -> None:
    settings = FetcherSettings()
    common = settings.common
    configure_logging(service="email-fetcher", level=common.log_level, fmt=common.log_format)
    # aioimaplib logs every line it sends and receives at debug (message bodies; a password
    # with quotes or backslashes escapes its scrubbing) and protocol chatter at info.
    logging.getLogger("aioimaplib").setLevel(logging.WARNING)
    if common.metrics_port is not None:
        start_http_server(common.metrics_port)
    try:
        asyncio.run(_serve(FetcherApp(settings)))
    except PipelineError as exc:
        log.error("fetcher stopped", error=str(exc), error_kind=exc.kind)
        raise SystemExit(1) from exc


async def _serve(app: FetcherApp) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("stop requested: finishing in-flight messages")
        stopping.set()
        for sig in _SIGNALS:  # a second signal gets the default behaviour: stop now
            loop.remove_signal_handler(sig)

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop)
    try:
        await app.run(stopping)
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)


if __name__ == "__main__":
    main()
