"""POP3 answers and connection failures -> pipeline errors, in one place."""

from __future__ import annotations

import re
from typing import Final, Literal

from email_channels.errors import ChannelMisconfigured, PipelineError
from fetcher.sources import SourceUnavailable
from fetcher.sources.connection_errors import map_connection_error

Step = Literal["dns", "tcp", "tls", "auth", "folder", "fetch", "settle"]
_SERVER_TEXT_MAX: Final = 300
"""Server text kept in an error message at most."""
_TRANSIENT_CODES: Final = frozenset({"IN-USE", "SYS/TEMP", "LOGIN-DELAY"})


class Pop3Refused(Exception):
    """The server answered ``-ERR`` (before mapping)."""

    def __init__(self, command: str, text: str) -> None:
        super().__init__(f"{command} answered -ERR {text}")
        self.command = command
        self.text = text

    @property
    def code(self) -> str | None:
        """The RFC 2449 response code, e.g. ``AUTH`` from ``[AUTH] Authentication failed.``."""
        match = re.match(r"\[([A-Z/-]+)", self.text)
        return match.group(1) if match else None


class Pop3ProtocolError(Exception):
    """The server's answer made no sense (not +OK / -ERR, a bad UIDL line)."""


def map_pop3_error(exc: BaseException, *, step: Step) -> PipelineError | None:
    """The one place POP3 answers and connection failures become pipeline errors."""
    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, Pop3Refused):
        text = exc.text[:_SERVER_TEXT_MAX]
        message = f"the POP3 server refused {exc.command}: {text}".strip()
        if exc.code in _TRANSIENT_CODES:
            return SourceUnavailable(message, step=step)
        if exc.code == "AUTH" or step in {"auth", "tls"}:
            return ChannelMisconfigured(message, step=step if step == "tls" else "auth")
        return SourceUnavailable(message, step=step)
    if isinstance(exc, Pop3ProtocolError):
        return SourceUnavailable(f"POP3 protocol error: {exc}", step=step)
    return map_connection_error(exc, step=step, server="POP3")


class Mapped:
    """``with Mapped(step):`` re-raises library exceptions as pipeline errors."""

    def __init__(self, step: Step) -> None:
        self.step = step

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is None or not isinstance(exc, Exception):
            return
        error = map_pop3_error(exc, step=self.step)
        if error is not None and error is not exc:
            raise error from exc
