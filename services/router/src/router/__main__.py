"""``python -m router`` / ``email-router``: run the router until SIGTERM or SIGINT.

Settings are read once here and passed down. On SIGTERM the batch in flight commits (or is
aborted when it is in the middle of a retry), then the clients stop and the process exits 0;
a crash (or kill -9) leaves at most an open transaction, aborted when the instance restarts.
"""

from __future__ import annotations

import asyncio

import structlog

from email_channels.blobstore import blob_store_from_url
from email_channels.errors import PipelineError
from email_channels.service import (
    exit_with_help_if_asked,
    health_server,
    run_until_signalled,
    start_observability,
)
from router.app import RouterApp
from router.settings import RouterSettings

log = structlog.get_logger("router")


def main() -> None:
    exit_with_help_if_asked("router", __doc__ or "", RouterSettings)
    settings = RouterSettings()
    common = settings.common
    start_observability("router", common)
    log.info(
        "router starting",
        app_id=settings.app_id,
        instance_id=settings.instance_id,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic_prefix=settings.kafka.topic_prefix,
    )
    app = RouterApp(settings, blobs=blob_store_from_url(common.blob_store_url))
    health = health_server(common, app.not_ready_reason)
    try:
        asyncio.run(run_until_signalled(app.run, health=health))
    except PipelineError as exc:
        log.error("router stopped", error=str(exc), error_kind=exc.kind)
        raise SystemExit(1) from exc
    log.info("router stopped")


if __name__ == "__main__":
    main()
