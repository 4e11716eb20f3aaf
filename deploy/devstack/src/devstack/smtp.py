"""A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps every message it accepts.

By default it behaves like a submission server: STARTTLS with the test certificate, and
AUTH PLAIN/LOGIN offered and required only after TLS (before that, `MAIL` is answered with
"530 Must issue a STARTTLS command first"). `credentials=None` makes an open server that needs no
AUTH (STARTTLS is still offered); `implicit_tls=True` speaks TLS from the first byte (port 465
style) instead of STARTTLS. `pipelining=True` also advertises PIPELINING (RFC 2920; aiosmtpd reads
commands one line at a time, so pipelined commands work whether advertised or not).

Tests read what arrived through `messages` or `wait_for()`, and can make the server answer
a chosen reply for matching recipients (`reply_to_recipients(r".*@gone\\.example", "550 ...")`)
to drive a sender's retry and reject paths.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from typing import TYPE_CHECKING, Any, Final, Self

import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from email.message import EmailMessage
    from pathlib import Path
    from types import TracebackType

    from devstack.certs import TestPki

log = structlog.get_logger(__name__)

_REPLY = re.compile(r"[45]\d\d[ -].*")


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One message the server accepted, with its envelope and how the client connected."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    tls: bool
    authenticated_as: str | None
    mail_options: tuple[str, ...] = ()
    received_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def message(self) -> EmailMessage:
        """The raw bytes parsed with the modern `email` policy."""
        return message_from_bytes(self.raw, policy=policy.default)


class SmtpServer:
    """An aiosmtpd server in its own thread; use as a context manager or `start()` / `stop()`.

    `port` is 0 until started. `credentials` is the one (username, password) pair accepted.
    """

    host: Final = "127.0.0.1"

    def __init__(
        self,
        pki: TestPki,
        *,
        credentials: tuple[str, str] | None = ("sender", "sender-password"),
        implicit_tls: bool = False,
        recipient_replies: Mapping[str, str] | None = None,
        data_size_limit: int = 32 * 1024 * 1024,
        pipelining: bool = False,
    ) -> None:
        self.pki = pki
        self.pipelining = pipelining
        self.credentials = credentials
        self.implicit_tls = implicit_tls
        self.data_size_limit = data_size_limit
        self.port = 0
        self._handler = _Handler(self)
        self._controller: _Controller | None = None
        self._received: list[ReceivedMail] = []
        self._rules: list[tuple[re.Pattern[str], str]] = []
        self._changed = threading.Condition()
        for pattern, reply in (recipient_replies or {}).items():
            self.reply_to_recipients(pattern, reply)

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_cert

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._controller is not None:
            return self
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        requires_auth = self.credentials is not None
        smtp_options: dict[str, Any] = {
            "server_hostname": "localhost",
            "data_size_limit": self.data_size_limit,
            "authenticator": self._handler.authenticate,
            # Mechanisms are offered only when there is someone to log in as.
            "auth_exclude_mechanism": () if requires_auth else ("PLAIN", "LOGIN"),
        }
        if self.implicit_tls:
            # aiosmtpd's own TLS checks only know STARTTLS; the whole session is TLS here,
            # and _Handler.handle_MAIL enforces AUTH.
            smtp_options |= {"ssl_context": tls, "auth_require_tls": False, "auth_required": False}
        else:
            smtp_options |= {
                "tls_context": tls,
                "require_starttls": requires_auth,
                "auth_require_tls": True,
                "auth_required": requires_auth,
            }
        controller = _Controller(self._handler, hostname=self.host, port=0, **smtp_options)
        controller.start()
        self._controller = controller
        self.port = controller.port
        log.info(
            "smtp.started",
            port=self.port,
            implicit_tls=self.implicit_tls,
            auth=requires_auth,
        )
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
            log.info("smtp.stopped", port=self.port)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests use -----------------------------------------------------------------------

    @property
    def messages(self) -> tuple[ReceivedMail, ...]:
        with self._changed:
            return tuple(self._received)

    def clear(self) -> None:
        with self._changed:
            self._received.clear()

    def wait_for(
        self,
        predicate: Callable[[ReceivedMail], bool] = lambda _: True,
        timeout: float = 10.0,
    ) -> ReceivedMail:
        """The first received message (already there or still to come) matching `predicate`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for mail in self._received:
                    if predicate(mail):
                        return mail
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(m.mail_from, m.rcpt_tos) for m in self._received]
                    raise TimeoutError(f"no matching mail within {timeout}s; received: {seen}")
                self._changed.wait(remaining)

    def reply_to_recipients(self, pattern: str, reply: str) -> None:
        """Answer RCPT TO for addresses fully matching `pattern` (case-insensitive) with `reply`.

        `reply` is a complete SMTP reply such as "451 4.3.0 Try again later" or
        "550 5.1.1 No such user"; the first matching rule wins.
        """
        if not _REPLY.fullmatch(reply):
            raise ValueError(f"not a 4xx/5xx SMTP reply: {reply!r}")
        with self._changed:
            self._rules.append((re.compile(pattern, re.IGNORECASE), reply))

    def clear_recipient_replies(self) -> None:
        with self._changed:
            self._rules.clear()

    # -- called from the server thread --------------------------------------------------------

    def _reply_for(self, address: str) -> str | None:
        with self._changed:
            for pattern, reply in self._rules:
                if pattern.fullmatch(address):
                    return reply
        return None

    def _record(self, mail: ReceivedMail) -> None:
        with self._changed:
            self._received.append(mail)
            self._changed.notify_all()
        log.info("smtp.received", mail_from=mail.mail_from, rcpt_tos=mail.rcpt_tos, tls=mail.tls)


class _Controller(Controller):
    """Binds port 0 and learns the port the kernel chose, so no port is ever guessed."""

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class _Handler:
    """aiosmtpd hooks; they run in the server's thread and event loop."""

    def __init__(self, owner: SmtpServer) -> None:
        self._owner = owner

    def authenticate(
        self, _server: Any, _session: Any, _envelope: Any, _mechanism: str, auth_data: Any
    ) -> AuthResult:
        credentials = self._owner.credentials
        if credentials is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode(errors="replace")
        ok = hmac.compare_digest(auth_data.login, credentials[0].encode()) & hmac.compare_digest(
            auth_data.password, credentials[1].encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self, _server: Any, session: Any, _envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self._owner.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, _server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self._owner.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, _server: Any, _session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self._owner._reply_for(address)  # noqa: SLF001 - the server's own helper
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        self._owner._record(  # noqa: SLF001 - the server's own helper
            ReceivedMail(
                mail_from=envelope.mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                raw=bytes(envelope.original_content),
                tls=tls,
                authenticated_as=session.auth_data if session.authenticated else None,
                mail_options=tuple(_as_text(o) for o in envelope.mail_options),
            )
        )
        return "250 2.0.0 Message accepted for delivery"


def _as_text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
