"""``python -m router`` / ``email-router``: run the router as a faust worker.

Settings are read once here and passed down. Logging is ours (structlog JSON or console via
``configure_logging``); the faust worker is told not to install its own handlers, so faust,
mode and aiokafka records go through the same root handler. SIGTERM and SIGINT stop the worker
cleanly (agents stop, acked offsets are committed, the producer flushes) and the process exits
with 0; a crash exits non-zero.
"""

from __future__ import annotations

import asyncio

import faust
import structlog

from email_channels.admin import ensure_topics
from email_channels.blobstore import blob_store_from_url
from email_channels.service import exit_with_help_if_asked, start_observability
from router.app import build_app
from router.settings import RouterSettings

log = structlog.get_logger("router")


def main() -> None:
    exit_with_help_if_asked("router", __doc__ or "", RouterSettings)
    settings = RouterSettings()
    common = settings.common
    start_observability("router", common)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if settings.ensure_topics:
        loop.run_until_complete(ensure_topics(settings.kafka, client_id=settings.app_id))

    app = build_app(settings, blobs=blob_store_from_url(common.blob_store_url))
    worker = faust.Worker(
        app,
        loop=loop,
        loglevel=common.log_level.upper(),
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.spinner = None
    log.info(
        "router starting",
        app_id=settings.app_id,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic_prefix=settings.kafka.topic_prefix,
    )
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
