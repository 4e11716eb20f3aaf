"""The admin page's files: every module the page imports is served, under the strict CSP."""

from __future__ import annotations

import re

import httpx
from fastapi import FastAPI

from config_api import admin_page


async def _client() -> httpx.AsyncClient:
    app = FastAPI()
    admin_page.install(app)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://page")


async def test_every_imported_module_is_served_with_the_csp() -> None:
    """Each ``./x.js`` a served script imports is itself served as JavaScript with the CSP."""
    async with await _client() as client:
        page = await client.get("/")
        entry = re.search(r'<script type="module" src="static/([a-z-]+\.js)">', page.text)
        assert entry is not None
        pending, seen = [entry.group(1)], set()
        while pending:
            name = pending.pop()
            seen.add(name)
            response = await client.get(f"/static/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"].startswith("text/javascript")
            assert "default-src 'self'" in response.headers["content-security-policy"]
            pending += [
                m for m in re.findall(r'from "\./([a-z-]+\.js)"', response.text) if m not in seen
            ]
        assert {"admin.js", "api.js", "dom.js"} <= seen


async def test_unknown_or_traversing_names_are_not_served() -> None:
    """Only files of ``static/`` with a known type are served; nothing else is reachable."""
    async with await _client() as client:
        for name in ("nope.js", "..%2Fapi.py", "index.html", "admin_page.py"):
            assert (await client.get(f"/static/{name}")).status_code == 404, name
