"""The admin web page at ``/``: static HTML + a little JS that calls the API.

The three files live in ``static/`` and are read once when the app is built (they are small
and fixed). The page puts data into the DOM only as text, and its Content-Security-Policy
allows nothing but this origin's own script and style files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import HTTPException, Response

if TYPE_CHECKING:
    from fastapi import FastAPI

STATIC = Path(__file__).parent / "static"
ASSETS: dict[str, str] = {
    "admin.js": "text/javascript; charset=utf-8",
    "admin.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its script and style under ``/static``."""
    page = (STATIC / "index.html").read_bytes()
    assets = {name: (STATIC / name).read_bytes() for name in ASSETS}

    @app.get("/", include_in_schema=False)
    async def admin_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def admin_asset(name: str) -> Response:
        if name not in assets:
            raise HTTPException(status_code=404)
        return Response(assets[name], media_type=ASSETS[name], headers=SECURITY_HEADERS)
