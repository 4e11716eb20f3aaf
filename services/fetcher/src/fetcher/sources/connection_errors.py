"""Socket and TLS failures of a mail connection -> pipeline errors, for every mail protocol.

Each protocol's ``map_*_error`` handles its own library and server answers first and hands
what is left here, so an untrusted certificate or a refused connection reads the same for
IMAP and POP3.
"""

from __future__ import annotations

import ssl

from email_channels.errors import ChannelMisconfigured, PipelineError
from fetcher.sources import SourceUnavailable


def map_connection_error(  # noqa: PLR0911 - one return per kind of failure
    exc: BaseException, *, step: str, server: str
) -> PipelineError | None:
    """Timeouts, resets, refusals and TLS failures; None for anything else."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ChannelMisconfigured(
            f"the server's TLS certificate is not trusted ({_ssl_reason(exc)}); add its CA to "
            "EMAIL_CHANNELS_CA_FILE, or turn verify_tls off for this channel if you must",
            step="tls",
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return SourceUnavailable(f"the TLS connection was cut: {_ssl_reason(exc)}", step="tls")
    if isinstance(exc, ssl.SSLError):
        return ChannelMisconfigured(
            f"TLS handshake failed ({_ssl_reason(exc)}): is the port right for this TLS mode?",
            step="tls",
        )
    if isinstance(exc, TimeoutError):
        return SourceUnavailable(f"the {server} server did not answer in time ({step})", step=step)
    if isinstance(exc, ConnectionRefusedError):
        return SourceUnavailable(f"connection refused: {exc.strerror or exc}", step="tcp")
    if isinstance(exc, OSError):  # resets, aborts, unreachable networks, broken pipes
        return SourceUnavailable(
            f"connection failed: {type(exc).__name__}: {exc.strerror or exc}", step=step
        )
    return None


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(
        getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc.strerror or exc
    )
