"""IMAP errors and their mapping: the one place aioimaplib, socket and ssl exceptions (and NO/BAD
answers) become pipeline errors.

Bad credentials or a missing folder are :class:`~email_channels.errors.ChannelMisconfigured`
(step ``auth`` / ``folder``); timeouts and resets are :class:`~fetcher.sources.SourceUnavailable`
(a TransientError).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final, Literal

from aioimaplib import AioImapException, CommandTimeout

from email_channels.errors import ChannelMisconfigured, PipelineError
from fetcher.sources import SourceUnavailable
from fetcher.sources.connection_errors import map_connection_error

if TYPE_CHECKING:
    from collections.abc import Iterator

Step = Literal["dns", "tcp", "tls", "auth", "folder", "fetch", "settle"]

_SERVER_TEXT_MAX: Final = 300


class ImapRefused(Exception):
    """The server answered a command with NO or BAD (before mapping)."""

    def __init__(self, command: str, result: str, text: str) -> None:
        super().__init__(f"{command} answered {result}: {text}")
        self.command = command
        self.result = result
        self.text = text

    @property
    def code(self) -> str | None:
        """The response code, e.g. ``AUTHENTICATIONFAILED`` from ``[AUTHENTICATIONFAILED] ...``."""
        match = re.match(r"\[([A-Z-]+)", self.text)
        return match.group(1) if match else None


# RFC 5530 response codes, by who can fix them.
_TRANSIENT_CODES: Final = frozenset(
    {"UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG", "EXPUNGEISSUED", "CORRUPTION"}
)
_AUTH_CODES: Final = frozenset(
    {"AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "EXPIRED", "CONTACTADMIN"}
)
_FOLDER_CODES: Final = frozenset({"NONEXISTENT", "TRYCREATE", "NOPERM", "CANNOT", "OVERQUOTA"})
_TLS_CODES: Final = frozenset({"PRIVACYREQUIRED"})


def map_imap_error(exc: BaseException, *, step: Step) -> PipelineError | None:
    """Translate what aioimaplib, sockets and ssl raise into the pipeline's taxonomy.

    The one place these libraries' exceptions are interpreted. Returns None for anything
    else (a bug of ours stays a bug and keeps its traceback).
    """
    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, ImapRefused):
        return _map_refusal(exc, step)
    if isinstance(exc, CommandTimeout):
        return SourceUnavailable(f"the IMAP server did not answer in time ({step})", step=step)
    if (mapped := map_connection_error(exc, step=step, server="IMAP")) is not None:
        return mapped
    if isinstance(exc, AioImapException):  # protocol state errors: start over on a new connection
        return SourceUnavailable(f"IMAP protocol error: {exc}", step=step)
    return None


def _map_refusal(exc: ImapRefused, step: Step) -> PipelineError:
    code = exc.code
    text = exc.text[:_SERVER_TEXT_MAX]
    message = f"the IMAP server refused {exc.command}: {exc.result} {text}".strip()
    if code in _TRANSIENT_CODES:
        return SourceUnavailable(message, step=step)
    if code in _TLS_CODES:
        return ChannelMisconfigured(message, step="tls")
    if code in _AUTH_CODES:
        return ChannelMisconfigured(message, step="auth")
    if code in _FOLDER_CODES:
        return ChannelMisconfigured(message, step="folder")
    if step in {"auth", "folder"}:  # LOGIN or SELECT refused: a human must look at it
        return ChannelMisconfigured(message, step=step)
    return SourceUnavailable(message, step=step)


@contextmanager
def mapped(step: Step) -> Iterator[None]:
    """Re-raise library exceptions inside the block as the pipeline errors they map to."""
    try:
        yield
    except Exception as exc:
        error = map_imap_error(exc, step=step)
        if error is None or error is exc:
            raise
        raise error from exc
