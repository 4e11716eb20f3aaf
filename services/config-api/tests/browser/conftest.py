"""Browser tests: the admin page in Debian's Chromium (driven by Playwright) against a real
config-api on a loopback port and the real Kafka of the devstack fixtures.

Playwright's own browser download cannot work on these machines, so the browser is the
``chromium`` package (``deploy/bootstrap.sh`` installs it; ``CHROMIUM`` overrides the path).
Every page checks itself: a console error or an uncaught exception (a CSP violation included)
fails the test, and :func:`screen` runs axe-core and saves a screenshot of each screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, async_playwright

from config_api.app import create_app
from devstack.ports import HOST, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from config_api.settings import ConfigApiSettings
    from devstack.certs import TestPki

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[4]
SCREENSHOTS = Path(os.environ.get("ADMIN_SCREENSHOTS", REPO / "var" / "screenshots"))
DESKTOP = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}
BLOCKING_IMPACTS = {"serious", "critical"}


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail(
            "Debian's chromium is not installed: run `make bootstrap` (deploy/bootstrap.sh "
            "installs it) or set CHROMIUM to a Chromium binary"
        )
    return path


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the session; each test gets its own context (cookies, storage)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path())
        try:
            yield launched
        finally:
            await launched.close()


@contextlib.asynccontextmanager
async def serving(settings: ConfigApiSettings) -> AsyncIterator[str]:
    """config-api under uvicorn on a free loopback port, in this event loop; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=HOST,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    task = asyncio.create_task(server.serve(), name="config-api-under-test")
    url = f"http://{HOST}:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client, asyncio.timeout(60):
            while True:
                if task.done():
                    task.result()
                    raise RuntimeError("config-api stopped before it was ready")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def browser_settings(api_settings: ConfigApiSettings, pki: TestPki) -> ConfigApiSettings:
    """The API's test settings, trusting the devstack CA and allowed to reach loopback mail
    servers (Validate connects to the test Dovecot and SMTP server)."""
    common = api_settings.common.model_copy(
        update={"ca_file": pki.ca_cert, "allowed_hosts": "127.0.0.1"}
    )
    return api_settings.model_copy(update={"common": common})


@pytest.fixture
async def admin_url(browser_settings: ConfigApiSettings) -> AsyncIterator[str]:
    """The URL of a ready config-api on this test's own topics."""
    async with serving(browser_settings) as url:
        yield url


def admin_token_of(settings: ConfigApiSettings) -> str | None:
    """The operator's admin token of these settings (None while the API has no sign-in)."""
    token = getattr(settings, "admin_token", None)
    return token.get_secret_value() if token is not None else None


@pytest.fixture
async def seed(
    admin_url: str, browser_settings: ConfigApiSettings
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the API under test, signed in as admin: tests set up data with it."""
    token = admin_token_of(browser_settings)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=f"{admin_url}/api/v1", headers=headers) as client:
        yield client


@pytest.fixture
def sign_in(
    admin_url: str, browser_settings: ConfigApiSettings
) -> Callable[[Page], Awaitable[None]]:
    """``await sign_in(page)``: open the admin page and sign in with the admin token."""

    async def _sign_in(page: Page) -> None:
        await page.goto(admin_url)
        token = admin_token_of(browser_settings)
        if token is not None:
            await page.get_by_label("Access token").fill(token)
            await page.get_by_role("button", name="Sign in").click()
        await page.locator("#channels-view").wait_for()

    return _sign_in


class PageProblems:
    """Console errors and uncaught exceptions of one page: a test fails on any of them."""

    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))
        page.on(
            "console",
            lambda message: (
                self.messages.append(f"console.{message.type}: {message.text}")
                if message.type == "error" and not _expected_console_error(message.text)
                else None
            ),
        )


def _expected_console_error(text: str) -> bool:
    # The browser logs every 4xx/5xx response; the page shows those to the user itself, and the
    # tests assert what it shows.
    return bool(re.match(r"Failed to load resource: the server responded with a status of 4", text))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test, so fixtures can tell that the test failed."""
    report = yield
    setattr(item, f"report_{call.when}", report)
    return report


@pytest.fixture
async def new_page(
    browser: Browser, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Awaitable[Page]]]:
    """``page = await new_page(viewport=NARROW)``: a fresh context; no console errors allowed.

    When the test fails, each page's last state is saved as ``failed-<test>-<n>.png``.
    """
    contexts = []
    pages: list[Page] = []
    problems: list[PageProblems] = []

    async def make(**options: Any) -> Page:
        context = await browser.new_context(viewport=options.pop("viewport", DESKTOP), **options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = await context.new_page()
        pages.append(page)
        problems.append(PageProblems(page))
        return page

    yield make
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for number, page in enumerate(pages):
            with contextlib.suppress(Exception):
                await page.screenshot(
                    path=SCREENSHOTS / f"failed-{request.node.name}-{number}.png", full_page=True
                )
    for context in contexts:
        await context.close()
    errors = [message for p in problems for message in p.messages]
    assert not errors, "the page logged errors:\n" + "\n".join(errors)


@pytest.fixture
async def page(new_page: Callable[..., Awaitable[Page]]) -> Page:
    """A page at 1280x800."""
    return await new_page()


@pytest.fixture
async def narrow_page(new_page: Callable[..., Awaitable[Page]]) -> Page:
    """A page the size of a phone held upright."""
    return await new_page(viewport=NARROW)


@pytest.fixture(scope="session")
def screen() -> Callable[[Page, str], Awaitable[None]]:
    """``await screen(page, name)``: axe-core check plus a screenshot of the page as it is."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return _screen


_AXE = Axe()


async def _screen(page: Page, name: str) -> None:
    """Check the page as it is now with axe-core (no serious or critical violation) and save a
    screenshot as ``<SCREENSHOTS>/<name>.png``."""
    results = await _AXE.run(page)
    blocking = [v for v in results.response["violations"] if v["impact"] in BLOCKING_IMPACTS]
    await page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
    assert not blocking, f"accessibility violations on {name}:\n" + "\n".join(
        f"- {v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(" ".join(node["target"]) for node in v["nodes"][:5])
        for v in blocking
    )
