"""Liveness and readiness over HTTP for the Kubernetes probes of every service.

``GET /healthz`` -- the process is alive: the answer comes from the service's own event loop,
so a loop blocked by a runaway call does not answer and the kubelet restarts the pod.
``GET /readyz`` -- the service does its job: 200 when its readiness callable returns ``None``,
503 with the reason otherwise (e.g. Kafka unreachable, consumer group not joined yet, config
views not caught up). Both answer ``{"status": ..., "reason": ...}`` as JSON; other paths 404.

Each service supplies one :data:`Readiness` callable (built from the small checks below); the
server itself is the same everywhere and listens on ``EMAIL_CHANNELS_HEALTH_PORT``. config-api
serves the same two paths from its own FastAPI app and does not use this server.

The server is deliberately tiny (asyncio streams, one request per connection, no keep-alive):
it must keep answering when the rest of the service is busy, and it only ever serves probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self, TypeAlias

import structlog

if TYPE_CHECKING:
    from collections.abc import Iterable

    from email_channels.compacted import CompactedView

log = structlog.get_logger(__name__)

Readiness: TypeAlias = Callable[[], str | None]
"""A readiness check: ``None`` when ready, else a short reason an operator can act on."""

REQUEST_TIMEOUT_S = 5.0
"""How long a client may take to send its request line and headers."""

MAX_REQUEST_BYTES = 8 * 1024


def first_problem(*checks: Callable[[], str | None]) -> str | None:
    """The reason of the first check that fails, or ``None`` when all pass."""
    for check in checks:
        reason = check()
        if reason is not None:
            return reason
    return None


def view_problem(view: CompactedView[Any] | None, name: str) -> str | None:
    """Why a config view is not usable yet: not started, reader died, not caught up."""
    if view is None:
        return f"{name} view not started"
    if view.failure is not None:
        return f"the reader of {view.topic} died: {type(view.failure).__name__}"
    if not view.caught_up:
        return f"{view.topic} not caught up yet"
    return None


def views_problem(views: Iterable[tuple[str, CompactedView[Any] | None]]) -> str | None:
    """:func:`view_problem` of each ``(name, view)``; the first reason wins."""
    for name, view in views:
        reason = view_problem(view, name)
        if reason is not None:
            return reason
    return None


def group_problem(consumer: Any, group: str) -> str | None:
    """Why an aiokafka group consumer is not a working member of ``group`` now.

    A member with a known group coordinator and a generation has joined the group (it may own
    no partition when there are more members than partitions: an idle standby is still ready).
    When the brokers become unreachable, aiokafka forgets the coordinator, so this check also
    answers "is it connected to Kafka". aiokafka exposes no public accessor for either; this
    is the one place that reads its internals.
    """
    coordinator = getattr(consumer, "_coordinator", None) if consumer is not None else None
    if coordinator is None:
        return f"consumer of group {group} not started"
    if getattr(coordinator, "coordinator_id", None) is None:
        return f"no group coordinator for {group}: Kafka unreachable or group not joined yet"
    if getattr(coordinator, "generation", -1) < 0:
        return f"joining consumer group {group}"
    return None


class HealthServer:
    """``/healthz`` and ``/readyz`` on ``host:port`` while the ``async with`` block runs."""

    def __init__(
        self,
        readiness: Readiness,
        *,
        port: int,
        host: str = "0.0.0.0",  # noqa: S104 - the kubelet probes the pod's IP
    ) -> None:
        self._readiness = readiness
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        log.info("health endpoints listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def answer(self, method: str, path: str) -> tuple[int, dict[str, str | None]]:
        """Status code and JSON body for one request (pure: no I/O)."""
        if method not in {"GET", "HEAD"}:
            return 405, {"status": "error", "reason": f"method {method} not allowed"}
        path = path.split("?", 1)[0]
        if path == "/healthz":
            return 200, {"status": "ok", "reason": None}
        if path == "/readyz":
            try:
                reason = self._readiness()
            except Exception as exc:  # a broken check must say so, not kill the server
                reason = f"readiness check failed: {type(exc).__name__}: {exc}"
            if reason is None:
                return 200, {"status": "ready", "reason": None}
            return 503, {"status": "unready", "reason": reason}
        return 404, {"status": "error", "reason": f"no such path {path}"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            request_line = head[:MAX_REQUEST_BYTES].split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            body: dict[str, str | None]
            if len(parts) != 3:  # noqa: PLR2004 - METHOD PATH VERSION
                status, body = 400, {"status": "error", "reason": "malformed request line"}
                method = "GET"
            else:
                method = parts[0]
                status, body = self.answer(method, parts[1])
            payload = json.dumps(body).encode()
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
            writer.write(
                f"HTTP/1.1 {status} {reason.get(status, 'Service Unavailable')}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n".encode("ascii")
                + (payload if method != "HEAD" else b"")
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a probe that hangs up or dawdles gets nothing; the next one will be served
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
