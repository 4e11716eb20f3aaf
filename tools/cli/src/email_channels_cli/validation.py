"""``channel validate``: ask config-api to validate a saved channel's settings.

config-api runs the same connection code as the fetcher and sender (DNS, TCP, TLS, auth,
folder), bounded to 60 s per direction, and answers with the steps it went through:
``POST /api/v1/channels/{id}/validate`` with ``{"direction": "inbound" | "outbound"}`` and a
bearer token (``CONFIG_API_TOKEN`` / ``--token``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from email_channels.errors import PermanentError, TransientError

VALIDATE_BOUND_S = 60.0
"""config-api's bound of one validation; the client waits a little longer."""


class ValidationRequestFailed(PermanentError):
    """config-api refused the request (unknown channel, bad token, no such setting)."""


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    skipped: bool
    message: str | None
    seconds: float | None


@dataclass(frozen=True)
class Outcome:
    """One direction's validation as config-api reported it."""

    direction: str
    ok: bool
    steps: list[Step]
    message: str | None


def outcome_of(direction: str, body: Any) -> Outcome:
    """Read config-api's answer (``{direction: report}`` or the report itself)."""
    report = body.get(direction, body) if isinstance(body, dict) else {}
    steps = []
    for raw in report.get("steps") or []:
        status = raw.get("status")
        ok = bool(raw.get("ok", status == "ok"))
        seconds = raw.get("elapsed_s", raw.get("duration_s"))
        if seconds is None and raw.get("elapsed_ms") is not None:
            seconds = raw["elapsed_ms"] / 1000
        steps.append(
            Step(
                name=str(raw.get("name") or raw.get("step") or "?"),
                ok=ok,
                skipped=status == "skipped",
                message=raw.get("message") or raw.get("detail"),
                seconds=seconds,
            )
        )
    ok = bool(report.get("ok", all(s.ok or s.skipped for s in steps) and bool(steps)))
    return Outcome(direction, ok, steps, report.get("message") or report.get("reason"))


async def validate_channel(
    url: str, token: str | None, channel_id: str, direction: str, *, timeout_s: float = 75.0
) -> Outcome:
    """Validate one direction of a saved channel through config-api."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    endpoint = f"{url.rstrip('/')}/api/v1/channels/{channel_id}/validate"
    try:
        async with httpx.AsyncClient(timeout=timeout_s, headers=headers) as client:
            response = await client.post(endpoint, json={"direction": direction})
    except httpx.TimeoutException as exc:
        raise TransientError(f"config-api gave no answer within {timeout_s} s") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"cannot reach config-api at {url}: {exc}") from exc
    if response.status_code in {401, 403}:
        raise ValidationRequestFailed(
            f"config-api refused the token ({response.status_code}): set CONFIG_API_TOKEN "
            "or --token to an admin API token"
        )
    if response.status_code == 404:  # noqa: PLR2004
        raise ValidationRequestFailed(f"config-api knows no channel {channel_id!r}")
    if response.status_code >= 400:  # noqa: PLR2004
        raise ValidationRequestFailed(
            f"config-api answered {response.status_code}: {response.text[:500]}"
        )
    return outcome_of(direction, response.json())
