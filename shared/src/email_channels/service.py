"""What every service's entry point does: logging, the metrics port, the health endpoints and
a graceful stop.

Frameworks that own their loop (uvicorn) only use :func:`start_observability` (and
start :func:`health_server` on their loop); the plain asyncio services also run their app
through :func:`run_until_signalled`, which serves the health endpoints while the app runs.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from enum import Enum
from typing import TYPE_CHECKING

import structlog
from prometheus_client import start_http_server
from pydantic_settings import BaseSettings

from email_channels.health import HealthServer
from email_channels.logconfig import configure_logging

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from email_channels.health import Readiness
    from email_channels.settings import CommonSettings

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HELP_FLAGS = {"-h", "--help"}


def exit_with_help_if_asked(
    service: str, description: str, settings: type[BaseSettings], argv: list[str] | None = None
) -> None:
    """``<service> --help``: what the service does and every setting it reads, then exit 0.

    The services take no arguments (settings come from the environment); this is how an
    operator learns the variable names from the image itself."""
    args = sys.argv[1:] if argv is None else argv
    if not HELP_FLAGS & set(args):
        return
    lines = [f"usage: {service}", "", description.strip(), "", "environment:"]
    lines += list(_settings_lines(settings))
    sys.stdout.write("\n".join(lines) + "\n")
    raise SystemExit(0)


def _settings_lines(settings: type[BaseSettings]) -> Iterator[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    nested: list[type[BaseSettings]] = []
    for name, field in settings.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseSettings):
            nested.append(kind)
            continue
        if field.default_factory is not None:
            default = " (default: computed)"
        elif field.is_required():
            default = " (required)"
        else:  # an enum member as it is written in the environment
            value = field.default.value if isinstance(field.default, Enum) else field.default
            default = f" (default: {value!r})"
        yield f"  {prefix}{name.upper()}{default}"
        if field.description:
            yield f"      {field.description}"
    for model in nested:
        yield from _settings_lines(model)


def start_observability(service: str, common: CommonSettings) -> None:
    """Configure logging for ``service`` and serve /metrics when a metrics port is set."""
    configure_logging(service=service, level=common.log_level, fmt=common.log_format)
    if common.metrics_port is not None:
        start_http_server(common.metrics_port)


def health_server(common: CommonSettings, readiness: Readiness) -> HealthServer | None:
    """The /healthz + /readyz server when ``EMAIL_CHANNELS_HEALTH_PORT`` is set (not started)."""
    if common.health_port is None:
        return None
    return HealthServer(readiness, port=common.health_port, host=common.health_host)


async def run_until_signalled(
    run: Callable[[asyncio.Event], Awaitable[None]], *, health: HealthServer | None = None
) -> None:
    """Run ``run(stopping)``; the first SIGTERM/SIGINT sets ``stopping`` so the app finishes
    its work in flight, a second one gets the default behaviour and ends the process.

    ``health`` (see :func:`health_server`) answers the probes from start to end; once a stop
    is requested it keeps answering /healthz, while readiness is the app's to report."""
    if health is not None:
        await health.start()
    try:
        await _run_until_signalled(run)
    finally:
        if health is not None:
            await health.stop()


async def _run_until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("stop requested: finishing work in flight")
        stopping.set()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop)
    try:
        await run(stopping)
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
