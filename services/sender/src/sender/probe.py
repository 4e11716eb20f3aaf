"""Validate an outbound (SMTP) setting with the sender's own SMTP code, without sending.

Used by config-api's Validate. The session is opened the way
:func:`sender.transports.smtp.open_session` opens it — same aiosmtplib client settings, the
transport's TLS context, its password handling, errors mapped by
:func:`~sender.transports.smtp.map_smtp_error`, closed by ``close_session`` — and then,
instead of DATA, ``MAIL FROM`` followed by ``RSET``: the server says whether it would take mail
from this sender, and nothing is sent.

Steps: ``dns`` (resolve + host policy), ``tcp`` (connect, greeting, EHLO; with ``ssl`` the TLS
handshake too), ``tls`` (STARTTLS), ``auth`` (AUTH, when the channel has a user),
``mail_from`` (MAIL FROM + RSET). Exchange Online settings: ``token``, ``mailbox``,
``send_permission`` (:func:`email_channels.graph_probe.probe_graph`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import aiosmtplib

from email_channels.errors import PipelineError
from email_channels.events import ChannelConfig, GraphOutbound, SmtpOutbound, TlsMode
from email_channels.graph_probe import probe_graph
from email_channels.tls import client_contexts
from sender.transports.smtp import SmtpTransport, _password, close_session, map_smtp_error

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path

    from email_channels.hostpolicy import HostPolicy
    from email_channels.secretbox import SecretBox
    from email_channels.validation import StepRecorder
    from sender.transports.smtp import Step


async def probe_outbound(
    channel: ChannelConfig,
    recorder: StepRecorder,
    *,
    secret_box: SecretBox,
    host_policy: HostPolicy,
    ca_file: Path | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Run the steps into ``recorder``; the first failure raises (and is recorded)."""
    server = channel.outbound
    if isinstance(server, GraphOutbound):  # Exchange Online: token, mailbox, Mail.Send
        await probe_graph(
            server,
            direction="outbound",
            secrets=secret_box,
            ca_file=ca_file,
            host_policy=host_policy,
            timeout_s=timeout_s,
            recorder=recorder,
        )
        return
    if not isinstance(server, SmtpOutbound):
        kind = server.kind if server is not None else "none"
        msg = f"validating {kind!r} outbound settings is not supported by this sender release"
        raise NotImplementedError(msg)
    transport = SmtpTransport(
        server,
        host_policy=host_policy,
        secrets=secret_box,
        tls_context=client_contexts(extra_ca_file=ca_file)[server.verify_tls],
        timeout=timeout_s,
    )
    where = transport.where

    def step(name: Step, probe_name: str, ok: str) -> AbstractContextManager[None]:
        return _mapped_step(recorder, name, probe_name, ok, where)

    with step("dns", "dns", f"{server.host} resolves to an allowed address"):
        await host_policy.check(server.host, server.port)
    password = None
    if server.username:
        with step("auth", "password", "the stored password can be decrypted"):
            password = _password(server, secret_box)
    client = aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        use_tls=server.tls is TlsMode.SSL,
        start_tls=False,
        tls_context=transport._tls_context if server.tls is not TlsMode.PLAIN else None,  # noqa: SLF001
        timeout=timeout_s,
    )
    try:
        tls_note = " with TLS (ssl)" if server.tls is TlsMode.SSL else ""
        with step("tcp", "tcp", f"connected to {where}{tls_note}; the server greeted, EHLO ok"):
            await client.connect()
        if server.tls is TlsMode.STARTTLS:
            with step("tls", "tls", "STARTTLS ok, certificate verified"):
                await client.starttls()
        if server.username and password is not None:
            with step("auth", "auth", f"logged in as {server.username}"):
                await client.login(server.username, password)
        sender = channel.email_address or ""
        with step("send", "mail_from", f"MAIL FROM:<{sender}> accepted, then RSET (not sent)"):
            await client.mail(sender)
            await client.rset()
    finally:
        await close_session(client)


@contextmanager
def _mapped_step(
    recorder: StepRecorder, step: Step, probe_name: str, ok: str, where: str
) -> Iterator[None]:
    """A recorder step whose library errors are mapped as the sender maps them."""
    with recorder.step(probe_name, ok):
        try:
            yield
        except PipelineError:
            raise
        except Exception as exc:
            error = map_smtp_error(exc, step=step, where=where)
            # Name the probe's step where the sender's taxonomy names none.
            error.step = getattr(error, "step", None) or probe_name  # type: ignore[attr-defined]
            raise error from exc
