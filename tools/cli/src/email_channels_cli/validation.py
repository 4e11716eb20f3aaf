"""``channel validate``: ask config-api to validate a saved channel's settings.

config-api runs the same connection code as the fetcher and sender (DNS, TCP, TLS, auth,
folder, ...) for every direction the channel configures, bounded as a whole (60 s by default),
and records the outcome on email.channel-status: ``POST /api/v1/channels/{id}/validate`` (no
body) with a bearer token (``CONFIG_API_TOKEN`` / ``--token``; an admin's). The answer is
``email_channels.validation.ValidationReport``, read here with that very model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
from pydantic import ValidationError

from email_channels.errors import PermanentError, TransientError
from email_channels.validation import ValidationReport

if TYPE_CHECKING:
    from email_channels.validation import Direction, DirectionReport

VALIDATE_BOUND_S = 60.0
"""config-api's default bound of one validation; the client waits a little longer."""


class ValidationRequestFailed(PermanentError):
    """config-api refused the request (unknown channel, bad token) or answered nonsense."""


def directions_of(report: ValidationReport, wanted: list[Direction]) -> list[DirectionReport]:
    """The reports of the ``wanted`` directions the channel configures, in that order."""
    found = {"inbound": report.inbound, "outbound": report.outbound}
    return [each for direction in wanted if (each := found[direction]) is not None]


def _problem(response: httpx.Response) -> str:
    """The ``detail`` of config-api's problem+json answer, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail) if detail else response.text[:500]


async def validate_channel(
    url: str,
    token: str | None,
    channel_id: str,
    *,
    timeout_s: float = VALIDATE_BOUND_S + 15,
) -> ValidationReport:
    """Validate every configured direction of a saved channel through config-api."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    endpoint = f"{url.rstrip('/')}/api/v1/channels/{channel_id}/validate"
    try:
        async with httpx.AsyncClient(timeout=timeout_s, headers=headers) as client:
            response = await client.post(endpoint)
    except httpx.TimeoutException as exc:
        raise TransientError(f"config-api gave no answer within {timeout_s} s") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"cannot reach config-api at {url}: {exc}") from exc
    if response.status_code in {401, 403}:
        raise ValidationRequestFailed(
            f"config-api refused the token ({response.status_code}: {_problem(response)}): set "
            "CONFIG_API_TOKEN or --token to an admin's API token"
        )
    if response.status_code == 404:  # noqa: PLR2004
        raise ValidationRequestFailed(
            f"config-api knows no channel {channel_id!r} ({_problem(response)})"
        )
    if response.status_code >= 400:  # noqa: PLR2004
        raise ValidationRequestFailed(
            f"config-api answered {response.status_code}: {_problem(response)}"
        )
    try:
        return ValidationReport.model_validate_json(response.content)
    except ValidationError as exc:
        raise ValidationRequestFailed(
            f"config-api's answer is not a validation report: {exc}"
        ) from exc
