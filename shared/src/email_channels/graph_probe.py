"""Validate an Exchange Online (Graph) setting: token, mailbox access, send permission.

For config-api's validate button (``fetcher.probe`` / ``sender.probe`` hand Exchange settings
here): :func:`probe_graph` contacts the identity platform and Graph as the fetcher / sender
would, within a bound, records each step, and either returns the steps that passed or raises an
error of the shared taxonomy whose ``step`` names what failed:

``token``       no token (tenant, client id, secret, redirect URI, or an expired sign-in)
``mailbox``     Graph does not know the mailbox. A **distribution group cannot be validated**:
                it has an address but no mailbox Graph can open - the error says so
``permission``  the mailbox cannot be read, or (outbound) the token lacks ``Mail.Send``
``dns``         a custom identity/Graph host refused by the operator's host policy
``tls``         the host's certificate is not trusted

Retriable failures (unreachable, throttled, timed out) raise a TransientError.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import TYPE_CHECKING, Any, Literal, Protocol

from email_channels.errors import ChannelMisconfigured, TransientError
from email_channels.events import GraphAuth
from email_channels.graph_auth import GraphTokens
from email_channels.graph_client import (
    GraphClient,
    GraphNotFound,
    MailboxThrottle,
    check_custom_hosts,
)
from email_channels.tls import client_context

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path

    from email_channels.events import GraphApp
    from email_channels.hostpolicy import HostPolicy
    from email_channels.secretbox import SecretBox

PROBE_TIMEOUT_S = 60.0


class StepSink(Protocol):
    """Where the steps go (config-api's ``email_channels.validation.StepRecorder``)."""

    def step(self, name: str, ok_message: str = "ok") -> AbstractContextManager[None]: ...


class _Unrecorded:
    @contextlib.contextmanager
    def step(self, name: str, ok_message: str = "ok") -> Iterator[None]:  # noqa: ARG002
        yield


async def probe_graph(
    app: GraphApp,
    *,
    direction: Literal["inbound", "outbound"],
    secrets: SecretBox | None,
    ca_file: Path | None = None,
    host_policy: HostPolicy | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
    recorder: StepSink | None = None,
) -> list[str]:
    """The steps that passed (``token``, ``mailbox``, ``send_permission``); raises at the first
    failure (recorded into ``recorder`` when one is given). Nothing is sent or changed."""
    steps = recorder or _Unrecorded()
    tokens = GraphTokens(app, secrets=secrets, ca_file=ca_file, timeout_s=timeout_s)
    client = GraphClient(
        app,
        tokens,
        tls=client_context(extra_ca_file=ca_file),
        throttle=MailboxThrottle(),
        timeout_s=timeout_s,
    )
    passed: list[str] = []
    try:
        async with asyncio.timeout(timeout_s):
            with steps.step("token", f"a token for app {app.client_id} ({app.auth.value})"):
                if host_policy is not None:
                    await check_custom_hosts(app, host_policy)
                token = await tokens.access_token()
            passed.append("token")
            with steps.step("mailbox", f"mailbox {app.mailbox} opens"):
                await _open_mailbox(client, app)
            passed.append("mailbox")
            if direction == "outbound":
                with steps.step("send_permission", f"the app may send as {app.mailbox}"):
                    _check_send_permission(app, token)
                passed.append("send_permission")
    except TimeoutError as exc:
        raise TransientError(f"no answer from Microsoft within {timeout_s:g} s") from exc
    finally:
        await client.aclose()
    return passed


async def _open_mailbox(client: GraphClient, app: GraphApp) -> None:
    try:
        await client.request("GET", f"{client.user_path}/mailFolders/inbox")
    except GraphNotFound as exc:
        raise ChannelMisconfigured(
            f"mailbox {app.mailbox} is not known to Graph ({exc.code or 'not found'}). "
            "If it is a distribution group, it cannot be validated: a group has no "
            "mailbox to read or send from - use a user or shared mailbox",
            step="mailbox",
        ) from exc


def _check_send_permission(app: GraphApp, token: str) -> None:
    granted = token_permissions(token, delegated=app.auth is GraphAuth.DELEGATED)
    if granted is not None and "Mail.Send" not in granted:
        raise ChannelMisconfigured(
            f"the app may not send as {app.mailbox}: its token grants "
            f"{', '.join(sorted(granted)) or 'no permission'}, not Mail.Send "
            "(grant it in Azure, with admin consent)",
            step="permission",
        )


def token_permissions(token: str, *, delegated: bool) -> set[str] | None:
    """The permissions an access token grants (``scp`` delegated, ``roles`` app-only), read
    from its claims without verifying it (Graph verifies); None when it is not a JWT."""
    try:
        payload = token.split(".")[1]
        claims: dict[str, Any] = json.loads(
            base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        )
    except (IndexError, ValueError):
        return None
    if delegated:
        return set(str(claims.get("scp", "")).split())
    roles = claims.get("roles", [])
    return {str(role) for role in roles} if isinstance(roles, list) else None
