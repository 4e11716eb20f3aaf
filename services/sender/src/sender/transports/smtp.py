"""SMTP transport (aiosmtplib): SSL/TLS, STARTTLS or plain; AUTH when the channel has a user.

:func:`open_session` opens one authenticated connection for a channel — host policy check,
connect, STARTTLS, AUTH — naming each step, so an error says where it happened (``dns``,
``tcp``, ``tls``, ``auth``) — the same steps the validate probe reports. :class:`SmtpTransport`
keeps those sessions in a per-channel :class:`~sender.transports.pool.SessionPool` and runs
MAIL/RCPT/DATA on them (step ``send``):

- a server that advertises ``PIPELINING`` (RFC 2920) gets each transaction in two writes
  (``[RSET] MAIL RCPT... DATA``, then the content) on a
  :class:`~sender.transports.pipelining.PipelinedConnection` that took the session over from
  aiosmtplib; any other server gets aiosmtplib's one command at a time;
- a reused session that turns out dead (421, reset, timeout) *before DATA* is discarded and the
  message tried once more on a fresh session;
- the intent callback (``before_data``) runs once the message is admitted by the pool (at most
  ``max_admitted`` messages per channel), at most once per message, and is awaited before a
  session is taken: the intent is always recorded before the message is out, never far ahead of
  it, and a session never waits for Kafka (its time goes to SMTP alone);
- a connection lost during DATA, before the server answered, raises
  :class:`~sender.errors.DeliveryUncertain`: the message may be delivered, never send it again;
- a failed transaction is RSET before the session is reused.

:func:`map_smtp_error` is the only place aiosmtplib, socket and TLS exceptions become errors of
the shared taxonomy:

=================================================  ==========================================
4xx reply (any step), connection refused/reset,    TransientError (:class:`SendDeferred` when
timeouts, TLS handshake cut short                  there is a reply)
5xx reply to MAIL/RCPT/DATA, every recipient       :class:`MessageRejected` with code and text
refused, an address the library cannot send
AUTH refused, "530 authentication required",       ChannelMisconfigured(step="auth")
no AUTH offered, password not decryptable
certificate not trusted, TLS on a plain port,      ChannelMisconfigured(step="tls")
STARTTLS not offered
5xx greeting / EHLO                                ChannelMisconfigured(step="tcp")
=================================================  ==========================================

The password is decrypted just before AUTH and never logged or put into an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import TYPE_CHECKING, Literal

import aiosmtplib
import structlog

from email_channels.errors import (
    ChannelMisconfigured,
    PermanentError,
    PipelineError,
    TransientError,
)
from email_channels.events import TlsMode
from email_channels.secretbox import SecretDecryptError
from email_channels.tls import client_context
from sender.errors import DeliveryUncertain, MessageRejected, SendDeferred, ServerReply
from sender.transports.base import SendResult, TransportName
from sender.transports.pipelining import DataStarted, PipelinedConnection, check_argument
from sender.transports.pool import PoolLimits, SessionPool

if TYPE_CHECKING:
    from collections.abc import Iterator

    from email_channels.events import SmtpOutbound
    from email_channels.hostpolicy import HostPolicy
    from email_channels.secretbox import SecretBox
    from sender.transports.base import BeforeData, ComposedEmail
    from sender.transports.pool import Session

log = structlog.get_logger(__name__)

Step = Literal["dns", "tcp", "tls", "auth", "send"]

_AUTH_CODES = frozenset({530, 534, 535, 538})
"""5xx replies that mean "who are you?": auth required, too weak, bad credentials, TLS first."""

_TLS_CONFIG_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION"}
)
"""Handshake failures that retrying cannot fix (a TLS mode that does not match the port)."""

QUIT_TIMEOUT = 5.0


class SmtpTransport:
    """Sends through one channel's SMTP server over pooled sessions.

    ``tls_context`` must match the channel's ``verify_tls`` (the factory keeps one of each,
    built at start-up so a missing CA file stops the service instead of every send); without
    one, a verifying context on the system store is used.
    """

    name: TransportName = "smtp"

    def __init__(
        self,
        server: SmtpOutbound,
        *,
        host_policy: HostPolicy,
        secrets: SecretBox | None,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 60.0,
        local_hostname: str | None = None,
        limits: PoolLimits | None = None,
    ) -> None:
        self._server = server
        self._host_policy = host_policy
        self._secrets = secrets
        self._tls_context = tls_context or client_context(verify=server.verify_tls)
        self._timeout = timeout
        self._local_hostname = local_hostname
        self.pool = SessionPool(self._open, limits or PoolLimits(), where=self.where)

    def __repr__(self) -> str:
        s = self._server
        return f"SmtpTransport({s.host}:{s.port}, tls={s.tls.value}, user={s.username!r})"

    @property
    def where(self) -> str:
        return f"{self._server.host}:{self._server.port}"

    async def _open(self) -> SmtpClient:
        client = await open_session(
            self._server,
            host_policy=self._host_policy,
            secrets=self._secrets,
            tls_context=self._tls_context,
            timeout=self._timeout,
            local_hostname=self._local_hostname,
        )
        if not client.supports_extension("pipelining"):
            return client
        try:
            return PipelinedConnection.take_over(client, timeout=self._timeout)
        except Exception as exc:
            await close_session(client)
            raise map_smtp_error(exc, step="tcp", where=self.where) from exc

    async def send(
        self, email: ComposedEmail, *, before_data: BeforeData | None = None
    ) -> SendResult:
        async with self.pool.admitted():
            if before_data is not None:
                await before_data()
            return await self._send(email)

    async def _send(self, email: ComposedEmail) -> SendResult:
        for tries_left in (1, 0):
            async with self.pool.session() as session:
                try:
                    if isinstance(session.client, PipelinedConnection):
                        refused, reply = await _pipelined(session, session.client, email)
                    else:
                        refused, reply = await _transaction(session, session.client, email)
                except _StaleSession as stale:
                    session.discard()
                    if tries_left:
                        log.debug("pooled smtp session went stale; reconnecting", error=str(stale))
                        continue
                    raise map_smtp_error(stale.cause, step="send", where=self.where) from stale
                except _DataLost as lost:
                    session.discard()
                    raise DeliveryUncertain(
                        f"{self.where}: connection lost during DATA before the server answered "
                        f"({lost.cause!r}); the message may have been delivered"
                    ) from lost.cause
                except PipelineError:
                    session.discard()
                    raise
                except Exception as exc:
                    session.needs_reset()
                    if isinstance(exc, OSError | TimeoutError):
                        session.discard()
                    raise map_smtp_error(exc, step="send", where=self.where) from exc
            break
        return SendResult(
            transport="smtp",
            message_id=email.message_id,
            response=f"{reply.code} {reply.message}",
            code=reply.code,
            refused={address: f"{r.code} {r.message}" for address, r in refused.items()},
        )

    async def aclose(self) -> None:
        await self.pool.aclose()


class _StaleSession(Exception):
    """A reused session failed before DATA: safe to try again on a fresh one."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _DataLost(Exception):
    """The connection broke after DATA started and before the server's reply."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


Refused = dict[str, aiosmtplib.SMTPResponse]


async def _pipelined(
    session: Session, client: PipelinedConnection, email: ComposedEmail
) -> tuple[Refused, aiosmtplib.SMTPResponse]:
    """One pipelined transaction (RFC 2920) on one session (the intent is acknowledged)."""
    mail, recipients = _commands(email, size=client.supports("size"))
    reset = session.dirty
    try:
        with _before_content(session):
            result = await client.transaction(
                reset=reset,
                mail=b" ".join(mail),
                recipients=[(a, b" ".join(command)) for a, command in recipients],
                content=email.data,
            )
    except DataStarted as lost:
        raise _DataLost(lost.cause) from lost.cause
    if reset:
        session.was_reset()
    return result.refused, result.reply


@contextlib.contextmanager
def _before_content(session: Session) -> Iterator[None]:
    """Failures before any content reached the server (nothing was delivered): on a reused
    session a lost connection, a timeout or a 421 means the session went stale (the caller
    retries once on a fresh one); any other refusal leaves the session to be reset."""
    try:
        yield
    except (OSError, TimeoutError) as exc:
        if session.reused:
            raise _StaleSession(exc) from exc
        raise
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code == 421 and session.reused:  # noqa: PLR2004 - "closing channel"
            raise _StaleSession(exc) from exc
        session.needs_reset()
        raise


def _commands(
    email: ComposedEmail, *, size: bool
) -> tuple[tuple[bytes, ...], list[tuple[str, tuple[bytes, ...]]]]:
    """The MAIL command's words and each recipient's RCPT words (no control characters)."""
    encoding = "utf-8" if email.utf8 else "ascii"
    options = [f"SIZE={len(email.data)}".encode()] if size else []
    if email.utf8:
        options.append(b"SMTPUTF8")
    mail = (b"MAIL", check_argument(_path(b"FROM:", email.envelope.mail_from, encoding)), *options)
    recipients: list[tuple[str, tuple[bytes, ...]]] = [
        (address, (b"RCPT", check_argument(_path(b"TO:", address, encoding))))
        for address in email.envelope.recipients
    ]
    return mail, recipients


async def _transaction(
    session: Session, client: aiosmtplib.SMTP, email: ComposedEmail
) -> tuple[Refused, aiosmtplib.SMTPResponse]:
    """MAIL, RCPT..., DATA one at a time (aiosmtplib; the intent is already acknowledged)."""
    refused = await _envelope(session, client, email)
    try:
        reply = await client.data(email.data)
    except aiosmtplib.SMTPResponseException:
        session.needs_reset()
        raise
    except (OSError, TimeoutError) as exc:
        raise _DataLost(exc) from exc
    return refused, reply


async def _envelope(session: Session, client: aiosmtplib.SMTP, email: ComposedEmail) -> Refused:
    """MAIL FROM and RCPT TO; returns the refused recipients (raises when all are refused)."""
    envelope = email.envelope
    mail, recipients = _commands(email, size=client.supports_extension("size"))
    with _before_content(session):
        if session.dirty:
            await client.rset()
            session.was_reset()
        reply = await client.execute_command(*mail)
        if reply.code != 250:  # noqa: PLR2004 - SMTP "completed"
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, envelope.mail_from)
    refused: Refused = {}
    for address, command in recipients:
        reply = await client.execute_command(*command)
        if reply.code not in {250, 251}:  # completed, will forward
            refused[address] = reply
    if len(refused) == len(envelope.recipients):
        session.needs_reset()
        raise aiosmtplib.SMTPRecipientsRefused(
            [
                aiosmtplib.SMTPRecipientRefused(r.code, r.message, address)
                for address, r in refused.items()
            ]
        )
    return refused


def _path(prefix: bytes, address: str, encoding: str) -> bytes:
    """``FROM:<address>`` / ``TO:<address>`` for MAIL / RCPT.

    Written here rather than by aiosmtplib's ``mail()``/``rcpt()``, which re-parse every
    address with the stdlib's ``parseaddr`` (a tenth of the sender's CPU per message): the
    composer has validated these addresses already, and :func:`check_argument` still refuses
    any control character (ValueError, mapped to MessageRejected) — no CR/LF reaches the wire.
    """
    if "<" in address or ">" in address:
        raise ValueError(f"address {address!r} cannot be sent as an SMTP path")
    return prefix + b"<" + address.encode(encoding) + b">"


async def open_session(
    server: SmtpOutbound,
    *,
    host_policy: HostPolicy,
    secrets: SecretBox | None,
    tls_context: ssl.SSLContext,
    timeout: float,
    local_hostname: str | None = None,
) -> aiosmtplib.SMTP:
    """One connected, TLS-upgraded (per the channel) and authenticated SMTP session.

    Steps ``dns`` (host policy), ``tcp`` (connect, greeting, EHLO), ``tls`` (STARTTLS),
    ``auth``; any failure is mapped by :func:`map_smtp_error` with its step and the connection
    closed. The caller owns the returned client (close it with :func:`close_session`).
    """
    where = f"{server.host}:{server.port}"
    step: Step = "dns"
    client: aiosmtplib.SMTP | None = None
    try:
        async with asyncio.timeout(timeout):
            await host_policy.check(server.host, server.port)
        password = _password(server, secrets)
        step = "tcp"
        client = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            use_tls=server.tls is TlsMode.SSL,
            start_tls=False,  # done below as its own step
            tls_context=tls_context if server.tls is not TlsMode.PLAIN else None,
            timeout=timeout,
            local_hostname=local_hostname,
        )
        await client.connect()
        if server.tls is TlsMode.STARTTLS:
            step = "tls"
            await client.starttls()
        if server.username and password is not None:
            step = "auth"
            await client.login(server.username, password)
        if client.is_ehlo_or_helo_needed:  # MAIL is sent without aiosmtplib's mail() (_path)
            step = "tcp"
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
    except PipelineError:
        if client is not None:
            await close_session(client)
        raise
    except Exception as exc:
        if client is not None:
            await close_session(client)
        raise map_smtp_error(exc, step=step, where=where) from exc
    return client


def _password(server: SmtpOutbound, secrets: SecretBox | None) -> str | None:
    if not server.username:
        return None
    if server.password is None:
        raise ChannelMisconfigured(
            f"SMTP user {server.username!r} is set but no password", step="auth"
        )
    if secrets is None:
        raise ChannelMisconfigured(
            "the SMTP password cannot be decrypted: the sender has no EMAIL_CHANNELS_SECRET_KEYS",
            step="auth",
        )
    try:
        return secrets.decrypt(server.password)
    except SecretDecryptError as exc:
        raise ChannelMisconfigured(
            f"the SMTP password cannot be decrypted: {exc}", step="auth"
        ) from exc


SmtpClient = aiosmtplib.SMTP | PipelinedConnection
"""A pooled session: aiosmtplib's (one command at a time) or taken over for pipelining."""


async def close_session(client: SmtpClient) -> None:
    """Say goodbye; a failure here never turns an accepted message into a failed send."""
    try:
        if client.is_connected:
            async with asyncio.timeout(QUIT_TIMEOUT):
                await client.quit()
    except Exception as exc:
        log.debug("smtp quit failed", error=str(exc))
    finally:
        with contextlib.suppress(Exception):
            client.close()


def map_smtp_error(exc: BaseException, *, step: Step, where: str) -> PipelineError:  # noqa: PLR0911 - a table
    """Translate an aiosmtplib / socket / TLS failure at ``step`` into the shared taxonomy."""
    tls_error = _tls_cause(exc)
    if tls_error is not None:
        return _map_tls(tls_error, where)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return _map_refused_recipients(exc, where)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _map_reply(ServerReply(exc.code, exc.message.strip()), step=step, where=where)
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts subclass it
        return TransientError(f"{where}: timed out at step {step}")
    if isinstance(exc, OSError):  # refused, reset, unreachable; SMTPConnectError and
        return TransientError(f"{where}: connection failed at step {step}: {exc}")  # Disconnected
    if isinstance(exc, aiosmtplib.SMTPException):
        # Raised without a reply: STARTTLS or AUTH not offered, no common AUTH mechanism,
        # SMTPUTF8 needed but missing.
        if step in {"tls", "auth"}:
            return ChannelMisconfigured(f"{where}: {exc.message}", step=step)
        return MessageRejected(f"{where}: {exc.message}")
    if isinstance(exc, ValueError):  # aiosmtplib refuses an address it cannot send safely
        return MessageRejected(f"address not sendable: {exc}")
    return PermanentError(f"{where}: unexpected {type(exc).__name__} at step {step}: {exc}")


def _map_reply(reply: ServerReply, *, step: Step, where: str) -> PipelineError:
    code = reply.code or 0
    if 400 <= code < 500:  # noqa: PLR2004 - the SMTP reply classes
        return SendDeferred(f"{where} answered {reply} at step {step}", reply=reply)
    if step == "auth" or code in _AUTH_CODES:
        return ChannelMisconfigured(f"{where} refused authentication: {reply}", step="auth")
    if step in {"tcp", "tls"}:
        return ChannelMisconfigured(f"{where} refused the session: {reply}", step=step)
    return MessageRejected(f"{where} rejected the message: {reply}", reply=reply)


def _map_refused_recipients(exc: aiosmtplib.SMTPRecipientsRefused, where: str) -> PipelineError:
    details = "; ".join(f"{r.recipient}: {r.code} {r.message.strip()}" for r in exc.recipients)
    replies = [ServerReply(r.code, r.message.strip()) for r in exc.recipients]
    temporary = [r for r in replies if r.code is not None and 400 <= r.code < 500]  # noqa: PLR2004
    if temporary:
        return SendDeferred(f"{where} refused every recipient: {details}", reply=temporary[0])
    return MessageRejected(
        f"{where} refused every recipient: {details}", reply=replies[0] if replies else None
    )


def _map_tls(error: ssl.SSLError, where: str) -> PipelineError:
    if isinstance(error, ssl.SSLCertVerificationError):
        return ChannelMisconfigured(
            f"TLS certificate of {where} is not trusted: {error.verify_message} "
            "(add its CA to EMAIL_CHANNELS_CA_FILE, or turn verify_tls off for this channel)",
            step="tls",
        )
    reason = error.reason or type(error).__name__
    if reason in _TLS_CONFIG_REASONS:
        return ChannelMisconfigured(
            f"TLS handshake with {where} failed: {reason} (does the TLS mode match the port?)",
            step="tls",
        )
    return TransientError(f"TLS handshake with {where} failed: {reason}")


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError behind ``exc`` (aiosmtplib wraps some in SMTPConnectError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
