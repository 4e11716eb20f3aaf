"""Sign-in in a real browser: a wrong token is refused next to the field, the admin token
signs in, and signing out returns to the sign-in screen."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from playwright.async_api import Page

    from config_api.settings import ConfigApiSettings

pytestmark = [pytest.mark.integration]


async def test_sign_in_with_the_admin_token(
    page: Page,
    admin_url: str,
    browser_settings: ConfigApiSettings,
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """Without a token the page asks for one; a wrong token is refused next to the field; the
    admin token opens the channel list and shows who is signed in; Sign out forgets it."""
    token = browser_settings.admin_token
    assert token is not None
    await page.goto(admin_url)
    field = page.get_by_label("Access token")
    await expect(field).to_be_focused()
    await screen(page, "sign-in")

    await field.fill("not-a-valid-token-at-all-0000")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#token-error")).to_contain_text("not accepted")
    await expect(field).to_have_attribute("aria-invalid", "true")

    await field.fill(token.get_secret_value())
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Channels", exact=True)).to_be_visible()
    await expect(page.locator("#whoami")).to_contain_text("admin")

    await page.reload()
    await expect(page.get_by_role("heading", name="Channels", exact=True)).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Access token")).to_be_visible()
    await page.reload()
    await expect(page.get_by_label("Access token")).to_be_visible()
