"""``email-fetcher`` / ``python -m fetcher``: run until SIGTERM or SIGINT, then stop cleanly.

On the first signal the fetcher finishes each channel's in-flight message, stores its cursor,
logs out of the mailboxes and leaves the consumer group (its channels move to the other
fetchers at once). A second signal ends the process the hard way.
"""

from __future__ import annotations

import asyncio
import logging

import structlog

from email_channels.errors import PipelineError
from email_channels.service import (
    exit_with_help_if_asked,
    health_server,
    run_until_signalled,
    start_observability,
)
from fetcher.app import FetcherApp
from fetcher.settings import FetcherSettings

log = structlog.get_logger(__name__)


def main() -> None:
    exit_with_help_if_asked("fetcher", __doc__ or "", FetcherSettings)
    settings = FetcherSettings()
    start_observability("fetcher", settings.common)
    # aioimaplib logs every line it sends and receives at debug (message bodies; a password
    # with quotes or backslashes escapes its scrubbing): never below WARNING, even at debug.
    logging.getLogger("aioimaplib").setLevel(logging.WARNING)
    try:
        app = FetcherApp(settings)
        health = health_server(settings.common, app.not_ready_reason)
        asyncio.run(run_until_signalled(app.run, health=health))
    except PipelineError as exc:
        log.error("fetcher stopped", error=str(exc), error_kind=exc.kind)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
