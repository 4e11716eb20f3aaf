"""Validate an inbound (IMAP) setting with the fetcher's own code path, step by step.

Used by config-api's Validate. Nothing here is a second IMAP client: the probe builds the
fetcher's :class:`~fetcher.sources.imap.ImapSource` through its factory, opens it (DNS and
host policy, TCP, TLS with certificate verification, LOGIN — exactly as the fetcher does,
errors mapped by :func:`~fetcher.sources.imap.map_imap_error`), then SELECTs each configured
folder and the move-target folder with the source's own select. It changes nothing on the
server (SELECT reads; no message is fetched, flagged, moved or deleted).

Steps: ``dns`` (resolve + host policy), ``login`` (TCP, TLS, LOGIN; a failure is named by
the fetcher's error: ``tcp``, ``tls`` or ``auth``), ``folder:<name>`` per folder. POP3
settings, through the fetcher's :class:`~fetcher.sources.pop3.Pop3Source` the same way:
``dns``, ``login`` (TCP, TLS or STLS, USER/PASS, then UIDL and LIST of the maildrop),
``maildrop`` (what the fetcher would take; nothing is retrieved or deleted). Exchange Online
settings: ``token``, ``mailbox`` (:func:`email_channels.graph_probe.probe_graph`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from email_channels.events import (
    ChannelConfig,
    FetchCursor,
    GraphInbound,
    ImapInbound,
    MailServer,
    Pop3Inbound,
    TlsMode,
)
from email_channels.graph_probe import probe_graph
from fetcher.sources.imap import ImapOptions, ImapSourceFactory
from fetcher.sources.pop3 import Pop3Options, Pop3SourceFactory

if TYPE_CHECKING:
    from pathlib import Path

    from email_channels.hostpolicy import HostPolicy
    from email_channels.secretbox import SecretBox
    from email_channels.validation import StepRecorder


async def probe_inbound(
    channel: ChannelConfig,
    recorder: StepRecorder,
    *,
    secret_box: SecretBox,
    host_policy: HostPolicy,
    ca_file: Path | None = None,
    command_timeout_s: float = 30.0,
) -> None:
    """Run the steps into ``recorder``; the first failure raises (and is recorded).

    The caller bounds the whole run (``asyncio.timeout``) and closes nothing: the source is
    closed here whatever happens.
    """
    inbound = channel.inbound
    if isinstance(inbound, GraphInbound):  # Exchange Online: token, mailbox
        await probe_graph(
            inbound,
            direction="inbound",
            secrets=secret_box,
            ca_file=ca_file,
            host_policy=host_policy,
            timeout_s=command_timeout_s,
            recorder=recorder,
        )
        return
    if isinstance(inbound, Pop3Inbound):
        await _probe_pop3(
            channel,
            inbound,
            recorder,
            secret_box=secret_box,
            host_policy=host_policy,
            ca_file=ca_file,
            command_timeout_s=command_timeout_s,
        )
        return
    if not isinstance(inbound, ImapInbound):
        kind = inbound.kind if inbound is not None else "none"
        msg = f"validating {kind!r} inbound settings is not supported by this fetcher release"
        raise NotImplementedError(msg)
    factory = ImapSourceFactory(
        secret_box=secret_box,
        host_policy=host_policy,
        options=ImapOptions(command_timeout=command_timeout_s, use_idle=False, ca_file=ca_file),
    )
    with recorder.step("dns", f"{inbound.host} resolves to an allowed address"):
        await host_policy.check(inbound.host, inbound.port)
    source = factory(channel)
    try:
        tls = _tls_words(inbound)
        with recorder.step(
            "login",
            f"connected to {inbound.host}:{inbound.port} with {tls}, logged in as "
            f"{inbound.username}",
        ):
            await source.open()
        folders = list(dict.fromkeys(inbound.folders)) or ["INBOX"]
        if inbound.move_to_folder:
            folders.append(inbound.move_to_folder)
        for folder in dict.fromkeys(folders):
            role = "move target" if folder == inbound.move_to_folder else "synced folder"
            with recorder.step(f"folder:{folder}", f"{role} {folder!r} can be selected"):
                await source._select(folder)  # noqa: SLF001 - the fetcher's own SELECT path
    finally:
        await source.close()


async def _probe_pop3(
    channel: ChannelConfig,
    inbound: Pop3Inbound,
    recorder: StepRecorder,
    *,
    secret_box: SecretBox,
    host_policy: HostPolicy,
    ca_file: Path | None,
    command_timeout_s: float,
) -> None:
    """dns, login, maildrop through the fetcher's own POP3 source (nothing retrieved/deleted)."""
    factory = Pop3SourceFactory(
        secret_box=secret_box,
        host_policy=host_policy,
        options=Pop3Options(command_timeout=command_timeout_s, ca_file=ca_file),
    )
    with recorder.step("dns", f"{inbound.host} resolves to an allowed address"):
        await host_policy.check(inbound.host, inbound.port)
    source = factory(channel)
    try:
        with recorder.step(
            "login",
            f"connected to {inbound.host}:{inbound.port} with {_tls_words(inbound)}, logged in "
            f"as {inbound.username}",
        ):
            await source.open()
        with recorder.step("maildrop", "the maildrop lists its messages (UIDL, LIST)"):
            await source.pending(FetchCursor(channel_id=channel.id))
    finally:
        await source.close()


def _tls_words(server: MailServer) -> str:
    if server.tls is TlsMode.PLAIN:
        return "no TLS"
    verified = "verified" if server.verify_tls else "NOT verified"
    return f"TLS ({server.tls.value}, certificate {verified})"
