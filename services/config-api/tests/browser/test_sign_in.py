"""Sign-in in a real browser: a wrong token is refused next to the field, the admin token
signs in, and signing out returns to the sign-in screen."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx
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


async def test_a_viewer_sees_no_write_controls(
    page: Page,
    admin_url: str,
    seed: httpx.AsyncClient,
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """Signed in with a viewer token, the lists show but New channel, bulk actions, Edit and
    Delete do not; Filters still opens, read-only."""
    created = await seed.post("/tokens", json={"name": "auditor", "role": "viewer"})
    assert created.status_code == 201, created.text
    assert (await seed.post("/channels", json={"name": "Support mailbox"})).status_code == 201
    await page.goto(admin_url)
    await page.get_by_label("Access token").fill(created.json()["token"])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#whoami")).to_contain_text("viewer")
    await expect(page.locator("#channel-rows")).to_contain_text("Support mailbox")
    await expect(page.get_by_role("button", name="New channel")).to_be_hidden()
    await expect(page.get_by_role("button", name="Disable", exact=True)).to_be_hidden()
    await expect(page.get_by_label("Select Support mailbox")).to_be_hidden()
    await page.get_by_role("button", name="Options for Support mailbox").click()
    menu = page.get_by_role("menu", name="Options for Support mailbox")
    await expect(menu.get_by_role("menuitem")).to_have_text(["Filters"])
    await menu.get_by_role("menuitem", name="Filters").click()
    dialog = page.get_by_role("dialog", name="Filters of Support mailbox")
    await expect(dialog.get_by_role("button", name="Add filter")).to_be_hidden()
    await screen(page, "viewer-filters")
