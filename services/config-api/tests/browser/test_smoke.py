"""The admin page loads in a real browser under its CSP, with no accessibility blockers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from playwright.async_api import Page

pytestmark = [pytest.mark.integration]


async def test_page_loads_under_its_csp(
    page: Page, admin_url: str, screen: Callable[[Page, str], Awaitable[None]]
) -> None:
    """The page loads and becomes ready with no console error (a CSP violation would be one)."""
    await page.goto(admin_url)
    await page.get_by_text("ready", exact=True).wait_for()
    await screen(page, "smoke")
