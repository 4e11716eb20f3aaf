"""The admin web page at ``/``: static HTML + plain JS modules and CSS that call the API.

The files live in ``static/`` and are read once when the app is built (they are small and
fixed); only the names found there with a known suffix are served. The page puts data into the
DOM only as text, and its Content-Security-Policy allows nothing but this origin's own script
and style files (no inline script or style); it may connect to this origin and, when OIDC
sign-in is configured, to the identity provider's origin (discovery and token endpoint). The
page itself needs no credentials: it holds no data, and every API call it makes carries the
signed-in user's bearer token.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import HTTPException, Response

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fastapi import FastAPI

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES: dict[str, str] = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def security_headers(connect_origins: Sequence[str] = ()) -> dict[str, str]:
    """The page's headers; ``connect_origins`` (the identity provider's) join ``connect-src``."""
    if not connect_origins:
        return SECURITY_HEADERS
    connect = " ".join(["'self'", *connect_origins])
    return {**SECURITY_HEADERS, "Content-Security-Policy": f"{CSP}; connect-src {connect}"}


def assets() -> dict[str, tuple[bytes, str]]:
    """Every servable file of ``static/`` by name: its bytes and content type."""
    return {
        path.name: (path.read_bytes(), CONTENT_TYPES[path.suffix])
        for path in sorted(STATIC.iterdir())
        if path.is_file() and path.suffix in CONTENT_TYPES
    }


def install(app: FastAPI, *, connect_origins: Sequence[str] = ()) -> None:
    """Serve the page at ``/`` and its scripts and styles under ``/static``."""
    page = (STATIC / "index.html").read_bytes()
    files = assets()
    headers = security_headers(connect_origins)

    @app.get("/", include_in_schema=False)
    async def admin_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/static/{name}", include_in_schema=False)
    async def admin_asset(name: str) -> Response:
        if name not in files:
            raise HTTPException(status_code=404)
        body, content_type = files[name]
        return Response(body, media_type=content_type, headers=headers)
