"""structlog set-up: JSON lines in production, pretty output on a TTY, secrets redacted.

Bind context with ``structlog.contextvars.bound_contextvars(channel_id=..., message_id=...)``
around a unit of work; log one canonical line when it ends.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

from email_channels.redaction import redact_secrets

NOISY_LIBRARIES = (
    "aiokafka",
    "faust",
    "mode",
    "uvicorn.access",
    "aioimaplib",
    "aiosmtplib",
    "httpx",  # logs every URL at INFO: Graph upload URLs carry their own access token
    "msal",
)


def configure_logging(
    *,
    service: str,
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
) -> None:
    """Configure structlog and the stdlib root logger (aiokafka, faust, uvicorn) alike."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            # Drop events below the level before the processors (redaction, rendering) run.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if not use_console else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if level != "debug":
        # Libraries log every rebalance step and request at INFO; keep their warnings only.
        for name in NOISY_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(service=service)


def _identity(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    return event_dict
