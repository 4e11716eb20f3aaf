"""Error responses: the one place a :class:`~config_api.errors.ConfigApiError` becomes HTTP.

Used by the exception handlers (``api.install_error_handlers``) and by the middlewares that
answer before a route runs (sign-in, body size). 401, 403 and 413 are
``application/problem+json`` (RFC 9457); the other errors keep their established bodies
(``detail`` naming the field for 422, ``current_revision`` for a stale revision).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

from config_api.errors import (
    ConfigApiError,
    InvalidInput,
    NotAuthenticated,
    RevisionConflict,
    Unavailable,
)

PROBLEM_JSON = "application/problem+json"
REALM = 'Bearer realm="config-api"'


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


def problem_response(
    status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """An RFC 9457 problem document."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return ProblemResponse(body, status_code=status, headers=headers)


def error_response(exc: ConfigApiError) -> JSONResponse:
    """The response for ``exc``. Bodies never echo input values or secrets."""
    headers: dict[str, str] = {}
    if isinstance(exc, NotAuthenticated):
        # RFC 6750 §3: no error code when no token was sent; invalid_token when one failed.
        headers["WWW-Authenticate"] = f'{REALM}, error="invalid_token"' if exc.token_sent else REALM
        return problem_response(exc.status_code, str(exc), headers=headers)
    if exc.status_code == HTTPStatus.FORBIDDEN:
        headers["WWW-Authenticate"] = f'{REALM}, error="insufficient_scope"'
        return problem_response(exc.status_code, str(exc), headers=headers)
    body: dict[str, Any]
    if isinstance(exc, InvalidInput):
        body = {
            "detail": [
                {"type": "value_error", "loc": list(p.loc), "field": p.field, "msg": p.message}
                for p in exc.problems
            ]
        }
    elif isinstance(exc, RevisionConflict):
        body = {"detail": str(exc), "current_revision": exc.current_revision}
    else:
        body = {"detail": str(exc), **getattr(exc, "extra", {})}
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(body, status_code=exc.status_code, headers=headers)
