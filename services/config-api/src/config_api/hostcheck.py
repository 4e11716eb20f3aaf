"""Trusted-host check (Starlette's ``TrustedHostMiddleware``), with the health probes exempt.

A ``Host`` header outside ``CONFIG_API_TRUSTED_HOSTS`` is refused with 400: a DNS-rebinding
page in an administrator's browser cannot reach the API through a name of its own. Kubernetes
probes address the pod by IP, so ``/healthz`` and ``/readyz`` (which hold no data) answer
whatever the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.middleware.trustedhost import TrustedHostMiddleware

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

PROBES = frozenset({"/healthz", "/readyz"})


class TrustedHosts(TrustedHostMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in PROBES:
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
