"""What can go wrong in a config request, and the HTTP status each error becomes.

The store and the mapping raise these; :mod:`config_api.api` turns them into responses in one
place (``install_error_handlers``). Kafka's own errors are translated into them in one place
too (``ConfigStore._publish``), so nothing above the store sees an aiokafka type::

    ConfigApiError                      status
    ├── NotAuthenticated                401  no, unknown, expired or badly signed credentials
    ├── Forbidden                       403  signed in, but the role does not allow it
    ├── NotFound                        404  no such channel / campaign
    ├── Conflict                        409
    │   ├── AlreadyExists               409  a client-chosen id is taken
    │   ├── RevisionConflict            409  stale ``revision``: names the current one
    │   └── CampaignInUse               409  delete refused: names the channels using it
    ├── InvalidInput                    422  names the field (``loc``), never echoes its value
    └── Unavailable                     503  retriable: Kafka down, not caught up yet, ...
        └── WriterFenced                503  a newer config-api instance took over the writes

401 and 403 answer ``application/problem+json`` (RFC 9457) with a ``WWW-Authenticate`` header.
Messages are shown to API clients and logged: they never contain a secret.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple


class ConfigApiError(Exception):
    """Base of every error the API maps to a response."""

    status_code: ClassVar[int] = 500
    outcome: ClassVar[str] = "error"
    """Short label for the canonical log line and the write metrics."""


class NotAuthenticated(ConfigApiError):
    """Who are you? No credentials, or credentials that do not verify (the message says why)."""

    status_code = 401
    outcome = "unauthenticated"

    def __init__(self, message: str, *, token_sent: bool = False) -> None:
        super().__init__(message)
        self.token_sent = token_sent


class Forbidden(ConfigApiError):
    """Signed in, but the role does not allow this (viewers read, admins write)."""

    status_code = 403
    outcome = "forbidden"


class NotFound(ConfigApiError):
    status_code = 404
    outcome = "not_found"


class Conflict(ConfigApiError):
    status_code = 409
    outcome = "conflict"


class AlreadyExists(Conflict):
    pass


class RevisionConflict(Conflict):
    """The client edited an old revision; it must reload and apply its change again."""

    def __init__(self, entity: str, entity_id: str, *, sent: int, current: int) -> None:
        super().__init__(
            f"{entity} {entity_id!r} was changed meanwhile: its current revision is {current}, "
            f"the request was based on revision {sent}; reload it and apply the change again"
        )
        self.current_revision = current


class CampaignInUse(Conflict):
    """A campaign that is a channel's default or a filter's target cannot be deleted."""

    def __init__(self, campaign_id: str, channels: list[dict[str, object]]) -> None:
        names = ", ".join(repr(c["name"]) for c in channels[:5])
        more = f" and {len(channels) - 5} more" if len(channels) > 5 else ""  # noqa: PLR2004
        super().__init__(
            f"campaign {campaign_id!r} is still used by {len(channels)} channel(s) "
            f"({names}{more}): change their default campaign or filters first"
        )
        self.extra = {"channels": channels}


class Problem(NamedTuple):
    """One broken rule: where (a FastAPI ``loc``: ``("body", "inbound", "password")``) and why."""

    loc: tuple[str | int, ...]
    message: str

    @property
    def field(self) -> str:
        """The dotted field name without the ``body`` / ``query`` / ``path`` part."""
        return ".".join(str(part) for part in self.loc[1:]) or str(self.loc[0])


class InvalidInput(ConfigApiError):
    """Input that is well-formed but breaks one or more rules, each naming its field."""

    status_code = 422
    outcome = "invalid"

    def __init__(self, *problems: Problem) -> None:
        super().__init__("; ".join(f"{problem.field}: {problem.message}" for problem in problems))
        self.problems = problems


class Unavailable(ConfigApiError):
    """Try again shortly: the same request may well succeed."""

    status_code = 503
    outcome = "unavailable"
    retry_after_s: ClassVar[int] = 2


class WriterFenced(Unavailable):
    """Kafka fenced this instance's producer: another config-api instance now writes."""

    outcome = "fenced"
    retry_after_s = 5
