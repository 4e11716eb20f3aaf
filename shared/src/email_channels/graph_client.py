"""Microsoft Graph over HTTPS (httpx): bearer tokens, throttling per mailbox, errors mapped once.

Both the fetcher (delta, ``$value``, mark read / move / delete) and the sender (sendMail,
drafts, upload sessions) talk to Graph through :class:`GraphClient`.

Throttling: a 429 or 503 with ``Retry-After`` marks *that mailbox* throttled until then
(:class:`MailboxThrottle`, one per process). Requests for it wait if the pause is short enough
for the caller (``max_wait_s``: the fetcher's own channel task may wait; the sender defers the
message instead of holding its consumer), otherwise raise :class:`GraphThrottled` - retriable,
with the pause. Other mailboxes are never held up.

:func:`map_graph_response` / :func:`map_graph_exception` are the only places Graph answers and
httpx exceptions become errors of the shared taxonomy:

=========================================  ==================================================
401 (after one forced token refresh)       ChannelMisconfigured(step="token")
403                                        ChannelMisconfigured(step="permission")
404                                        :class:`GraphNotFound` (permanent; callers decide)
429, 503 (Retry-After), 500, 502, 504      :class:`GraphThrottled` / TransientError
other 4xx                                  :class:`GraphRequestRefused` (permanent)
certificate not trusted                    ChannelMisconfigured(step="tls")
request sent, answer lost (read error,     :class:`GraphAnswerLost` (a TransientError: the
read timeout, connection closed)           request may have been carried out)
connect/write errors, other timeouts       TransientError
=========================================  ==================================================
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
import structlog

from email_channels.errors import (
    ChannelMisconfigured,
    PermanentError,
    PipelineError,
    TransientError,
)
from email_channels.graph_auth import authority_url, graph_url

if TYPE_CHECKING:
    from email_channels.events import GraphApp
    from email_channels.graph_auth import GraphTokens
    from email_channels.hostpolicy import HostPolicy

log = structlog.get_logger(__name__)

DEFAULT_RETRY_AFTER_S = 5.0
"""Pause when Graph throttles without saying for how long."""
MAX_THROTTLED_ATTEMPTS = 5


class GraphThrottled(TransientError):
    """Graph asked this mailbox to slow down (429/503); try again after ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class GraphAnswerLost(TransientError):
    """The request went out but its answer never came: Graph may have carried it out.

    Retriable for reads; a caller whose request has an effect that must not happen twice
    (sendMail) treats it as an unknown outcome.
    """


class GraphNotFound(PermanentError):
    """The mailbox, folder or message does not exist (any more)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class GraphRequestRefused(PermanentError):
    """Graph refused the request for what it is (400, 413, ...): the same request fails again."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class MailboxThrottle:
    """Until when each mailbox is throttled (monotonic clock); shared by a process's channels."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def throttle(self, mailbox: str, seconds: float) -> None:
        key = mailbox.casefold()
        self._until[key] = max(self._until.get(key, 0.0), time.monotonic() + seconds)

    def remaining(self, mailbox: str) -> float:
        """Seconds this mailbox must still wait (0 when it may go)."""
        until = self._until.get(mailbox.casefold())
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            self._until.pop(mailbox.casefold(), None)
            return 0.0
        return left


class GraphClient:
    """Graph requests for one app registration and mailbox."""

    def __init__(
        self,
        app: GraphApp,
        tokens: GraphTokens,
        *,
        tls: ssl.SSLContext,
        throttle: MailboxThrottle,
        timeout_s: float = 60.0,
        max_wait_s: float = 0.0,
        host_policy: HostPolicy | None = None,
    ) -> None:
        self.mailbox = app.mailbox
        self.base_url = graph_url(app)
        self._app = app
        self._host_policy = host_policy
        self._tokens = tokens
        self._throttle = throttle
        self._max_wait_s = max_wait_s
        self._http = httpx.AsyncClient(verify=tls, timeout=timeout_s, follow_redirects=False)

    @property
    def user_path(self) -> str:
        """``/users/{mailbox}``: the mailbox every request of this client is about."""
        return f"/users/{quote(self.mailbox, safe='@')}"

    async def aclose(self) -> None:
        """Close the HTTP connections, Graph's and msal's."""
        await self._http.aclose()
        self._tokens.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        authorised: bool = True,
    ) -> httpx.Response:
        """Send one request; a 2xx answer or an error of the taxonomy.

        ``path`` is relative to the Graph base URL, or absolute (a nextLink/deltaLink, an
        upload URL). ``authorised=False`` sends no bearer token (upload URLs carry their own).
        """
        url = path if path.startswith("https://") else f"{self.base_url}{path}"
        await self._check_hosts()
        refreshed = False
        for _attempt in range(MAX_THROTTLED_ATTEMPTS):
            await self._wait_for_mailbox()
            sent_headers = dict(headers or {})
            if authorised:
                token = await self._tokens.access_token(force_refresh=refreshed)
                sent_headers["Authorization"] = f"Bearer {token}"
            try:
                response = await self._http.request(
                    method, url, json=json, content=content, headers=sent_headers, params=params
                )
            except httpx.HTTPError as exc:
                raise map_graph_exception(exc) from exc
            if response.is_success:
                return response
            if response.status_code == 401 and authorised and not refreshed:  # noqa: PLR2004
                refreshed = True  # the token may have been revoked or expired early: once more
                continue
            error = map_graph_response(response)
            if isinstance(error, GraphThrottled):
                self._throttle.throttle(self.mailbox, error.retry_after_s)
                log.info(
                    "graph throttled the mailbox",
                    status=response.status_code,
                    retry_after_s=error.retry_after_s,
                )
                if error.retry_after_s <= self._max_wait_s:
                    continue
            raise error
        raise GraphThrottled(
            f"Graph kept throttling mailbox {self.mailbox}",
            retry_after_s=self._throttle.remaining(self.mailbox) or DEFAULT_RETRY_AFTER_S,
        )

    async def _check_hosts(self) -> None:
        policy, self._host_policy = self._host_policy, None  # once per client
        if policy is not None:
            await check_custom_hosts(self._app, policy)

    async def wait_for_mailbox(self) -> None:
        """Wait out this mailbox's throttle pause if it is at most ``max_wait_s``, else raise
        :class:`GraphThrottled` (a caller may wait here before committing to a request)."""
        await self._wait_for_mailbox()

    async def _wait_for_mailbox(self) -> None:
        left = self._throttle.remaining(self.mailbox)
        if left <= 0:
            return
        if left > self._max_wait_s:
            raise GraphThrottled(
                f"mailbox {self.mailbox} is throttled by Graph for {left:.1f} s more",
                retry_after_s=left,
            )
        await asyncio.sleep(left)


async def check_custom_hosts(app: GraphApp, policy: HostPolicy) -> None:
    """Apply the operator's host policy to the app's custom identity / Graph hosts.

    Microsoft's own hosts are no administrator's choice; a custom one (a local stand-in, a
    national cloud) is, and like any admin-supplied host it must not lead to loopback or
    private ranges unless EMAIL_CHANNELS_ALLOWED_HOSTS permits them.
    """
    for url, custom in ((authority_url(app), app.authority_host), (graph_url(app), app.graph_url)):
        if custom:
            parts = urlsplit(url)
            await policy.check(parts.hostname or "", parts.port or 443)


def _error_body(response: httpx.Response) -> tuple[str, str]:
    """Graph's ``{"error": {"code": ..., "message": ...}}``, tolerant of other bodies."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        return "", response.text[:200]
    if isinstance(error, dict):
        return str(error.get("code", "")), str(error.get("message", ""))[:300]
    return "", str(error)[:300]


def retry_after_s(response: httpx.Response) -> float:
    """``Retry-After`` in seconds (Graph sends delta-seconds); a default when missing."""
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return DEFAULT_RETRY_AFTER_S


def map_graph_response(response: httpx.Response) -> PipelineError:
    """Translate a non-2xx Graph answer into the taxonomy."""
    status = response.status_code
    code, message = _error_body(response)
    what = f"Graph answered {status} {code}: {message}".rstrip(": ")
    if status in {429, 503}:
        return GraphThrottled(what, retry_after_s=retry_after_s(response))
    if status == 401:  # noqa: PLR2004
        return ChannelMisconfigured(
            f"Graph refused the token ({code or 'unauthorised'}): the authorisation expired or "
            "was revoked",
            step="token",
        )
    if status == 403:  # noqa: PLR2004
        return ChannelMisconfigured(
            f"the app lacks a permission for this mailbox: {what}", step="permission"
        )
    if status == 404:  # noqa: PLR2004
        return GraphNotFound(what, code=code)
    if status >= 500:  # noqa: PLR2004
        return TransientError(what)
    return GraphRequestRefused(what, status=status, code=code)


def map_graph_exception(exc: Exception) -> PipelineError:
    """Translate an httpx / TLS failure into the taxonomy."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return ChannelMisconfigured(
                f"Graph's certificate is not trusted: {cause.verify_message}", step="tls"
            )
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ReadTimeout | httpx.ReadError | httpx.RemoteProtocolError):
        return GraphAnswerLost(f"Graph's answer was lost: {type(exc).__name__}: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"Graph timed out: {type(exc).__name__}")
    return TransientError(f"Graph cannot be reached: {type(exc).__name__}: {exc}")
