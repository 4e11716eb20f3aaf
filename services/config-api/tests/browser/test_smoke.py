"""The admin page loads in a real browser under its CSP; the accessibility check itself works."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from playwright.async_api import Page

pytestmark = [pytest.mark.integration]


async def test_page_loads_under_its_csp(page: Page, admin_url: str) -> None:
    """The page becomes ready with no console error (a CSP violation would be one) and its
    response keeps the strict Content-Security-Policy."""
    response = await page.goto(admin_url)
    assert response is not None
    assert "default-src 'self'" in response.headers["content-security-policy"]
    await page.get_by_text("ready", exact=True).wait_for()
    inline = await page.evaluate("document.querySelectorAll('script:not([src]), [style]').length")
    assert inline == 0


async def test_accessibility_check_finds_a_serious_violation(
    page: Page, screen: Callable[[Page, str], Awaitable[None]]
) -> None:
    """The axe-core check fails on a screen with a serious problem (an unlabelled input)."""
    await page.set_content("<!doctype html><html lang=en><title>t</title><main><input></main>")
    with pytest.raises(AssertionError, match="label"):
        await screen(page, "axe-self-test")
