"""Wiring only: settings -> secret box -> store (Kafka) -> FastAPI app with its lifespan.

The HTTP server answers ``/healthz`` at once; connecting to Kafka and reading the config
topics happens in the background (retried with backoff while Kafka is unreachable), and the
API and ``/readyz`` answer 503 until that is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog
from aiokafka.errors import KafkaError
from fastapi import FastAPI

from config_api import admin_page, oauth, sign_in_options
from config_api.api import Runtime, api, health, install_error_handlers
from config_api.auth import Authenticator, SignInMiddleware, protected_paths
from config_api.bodylimit import BodySizeLimit
from config_api.hostcheck import TrustedHosts
from config_api.metrics import HttpMetricsMiddleware
from config_api.store import ConfigStore
from email_channels.admin import ensure_topics
from email_channels.errors import PipelineError
from email_channels.settings import SecretKeysMissing

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from config_api.settings import ConfigApiSettings
    from email_channels.secretbox import SecretBox
    from email_channels.settings import CommonSettings

log = structlog.get_logger(__name__)

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0


class StartupError(Exception):
    """The service cannot run with this configuration; the message says what to fix."""


def secret_box(common: CommonSettings) -> SecretBox:
    """The keyring secrets are encrypted with; refuses to run without one."""
    try:
        return common.secret_box(needed_for="encrypt every password before it reaches Kafka")
    except SecretKeysMissing as exc:
        raise StartupError(str(exc)) from None


def create_app(settings: ConfigApiSettings) -> FastAPI:
    """The config API; raises :class:`StartupError` when the configuration cannot work."""
    runtime = Runtime(settings=settings, box=secret_box(settings.common))
    authenticator = Authenticator(settings, lookup_token=runtime.lookup_token)
    runtime.authenticator = authenticator
    if settings.admin_token is None and not settings.oidc_enabled:
        log.warning(
            "no way to sign in is configured: set CONFIG_API_ADMIN_TOKEN (and/or "
            "CONFIG_API_OIDC_ISSUER, _AUDIENCE, _JWKS_URL); API tokens already stored still work"
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(_connect(runtime), name="config-api-connect")
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            if runtime.store is not None:
                await runtime.store.stop()
                runtime.store = None
            log.info("config-api stopped")

    app = FastAPI(
        title="Email Channels config API",
        summary="Channels, campaigns and their settings; the state lives in Kafka.",
        version="1",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(HttpMetricsMiddleware)
    # Added last = runs first: host check, then body size, then sign-in, then the app.
    app.add_middleware(
        SignInMiddleware,
        authenticator=lambda: authenticator,
        protected=protected_paths(metrics=settings.metrics_require_auth),
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        TrustedHosts,
        allowed_hosts=[h.strip() for h in settings.trusted_hosts.split(",") if h.strip()],
    )
    app.include_router(api)
    app.include_router(oauth.router)  # Exchange "Save and authorise"
    app.include_router(health)
    app.include_router(sign_in_options.router)  # open: what the page's sign-in needs
    admin_page.install(app, connect_origins=sign_in_options.connect_origins(settings))
    return app


async def _connect(runtime: Runtime) -> None:
    """Connect and catch up, retrying with capped backoff until it works or the app stops."""
    settings = runtime.settings
    delay = FIRST_RETRY_S
    while True:
        try:
            if settings.ensure_topics:
                await ensure_topics(settings.kafka, client_id="config-api-admin")
            # A fresh store per attempt: a Kafka producer cannot be restarted once stopped.
            store = ConfigStore(
                settings.kafka,
                transactional_id=settings.transactional_id,
                write_timeout_s=settings.write_timeout_s,
            )
            await store.start(timeout=settings.startup_timeout_s)
        except Exception as exc:
            # Kafka unreachable, topics missing, ...: stay up, unready, and say why.
            runtime.start_problem = f"cannot read the config from Kafka yet: {exc}"
            expected = isinstance(exc, (PipelineError, KafkaError, OSError))
            (log.warning if expected else log.exception)(
                "kafka not ready, retrying",
                error=str(exc),
                error_kind=type(exc).__name__,
                retry_in_s=delay,
                bootstrap_servers=settings.kafka.bootstrap_servers,
            )
            await asyncio.sleep(delay)
            delay = min(MAX_RETRY_S, delay * 2)
            continue
        runtime.store = store
        runtime.start_problem = None
        log.info("config-api ready", topic_prefix=settings.kafka.topic_prefix)
        return
