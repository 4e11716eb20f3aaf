"""Entry point: ``email-config-api`` or ``python -m config_api``.

Settings come from the environment (``CONFIG_API_*``, ``KAFKA_*``, ``EMAIL_CHANNELS_*``).
SIGTERM / SIGINT stop it gracefully: uvicorn finishes the requests in flight, the lifespan
closes the Kafka clients, and the process exits with status 0.
"""

from __future__ import annotations

import signal
import sys

import structlog
import uvicorn
from pydantic import ValidationError

from config_api.app import StartupError, create_app
from config_api.settings import ConfigApiSettings
from email_channels.logconfig import configure_logging
from email_channels.service import exit_with_help_if_asked

SERVICE = "config-api"
EXIT_CONFIG = 2
EXIT_STARTUP = 3


def main() -> None:
    exit_with_help_if_asked(SERVICE, __doc__ or "", ConfigApiSettings)
    try:
        settings = ConfigApiSettings()
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        sys.exit(f"{SERVICE}: invalid settings ({fields}):\n{exc}")
    configure_logging(
        service=SERVICE, level=settings.common.log_level, fmt=settings.common.log_format
    )
    log = structlog.get_logger(SERVICE)
    try:
        app = create_app(settings)
    except StartupError as exc:
        log.error("cannot start", error=str(exc))
        print(f"{SERVICE}: {exc}", file=sys.stderr)  # noqa: T201 - the operator's first clue
        sys.exit(EXIT_CONFIG)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            root_path=settings.root_path,  # the server's setting (FastAPI's own is deprecated)
            log_config=None,  # keep our structlog set-up for uvicorn's loggers too
            access_log=settings.access_log,
            lifespan="on",
            timeout_graceful_shutdown=10,
            proxy_headers=True,
        )
    )
    _exit_quietly_after_signal()
    log.info("starting", host=settings.host, port=settings.port)
    server.run()
    if not server.started:
        sys.exit(EXIT_STARTUP)


def _exit_quietly_after_signal() -> None:
    """uvicorn shuts down on SIGTERM/SIGINT, then re-raises the signal to the handler that was
    installed before it. Make that handler a no-op, so a requested stop exits with status 0
    instead of dying by the signal (or printing a KeyboardInterrupt traceback)."""

    def ignore(_signum: int, _frame: object) -> None:
        return

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, ignore)


if __name__ == "__main__":
    main()
