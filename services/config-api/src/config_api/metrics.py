"""Prometheus metrics of the config API (served at ``/metrics``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

WRITES = Counter(
    "config_api_writes_total",
    "Config writes, by entity, operation and outcome (ok, invalid, conflict, not_found, ...)",
    ["entity", "operation", "outcome"],
)
WRITE_SECONDS = Histogram(
    "config_api_write_seconds",
    "Time from request to read-back of a config write",
    ["entity", "operation"],
)
HTTP_REQUESTS = Counter(
    "config_api_http_requests_total",
    "HTTP requests, by method, route template and status code",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "config_api_http_request_seconds",
    "HTTP request duration, by method and route template",
    ["method", "route"],
)


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by its route *template* (bounded label values)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - started)
