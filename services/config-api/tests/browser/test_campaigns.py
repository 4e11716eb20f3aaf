"""The campaigns screen in a real browser: create, errors next to the field, rename, and a
delete refused while channels use the campaign."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx
    from playwright.async_api import Page

pytestmark = [pytest.mark.integration]


async def test_create_rename_and_delete_refused_while_used(
    page: Page,
    seed: httpx.AsyncClient,
    sign_in: Callable[[Page], Awaitable[None]],
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """A campaign is created and renamed from the page; deleting it while a channel uses it is
    refused naming that channel; once unused it is deleted."""
    await sign_in(page)
    await page.get_by_role("link", name="Campaigns").click()
    view = page.locator("#campaigns-view")
    rows = page.locator("#campaign-rows tr")

    await view.get_by_label("Name", exact=True).fill("Support")
    await view.get_by_label("Id (optional)").fill("has space")
    await view.get_by_role("button", name="Create campaign").click()
    id_error = page.locator("#campaign-id-error")
    await expect(id_error).to_be_visible()
    await expect(view.get_by_label("Id (optional)")).to_have_attribute("aria-invalid", "true")

    await view.get_by_label("Id (optional)").fill("support")
    await view.get_by_role("button", name="Create campaign").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("Support")
    await expect(id_error).to_be_hidden()

    await page.get_by_role("button", name="Rename campaign Support").click()
    await page.get_by_label("New name of Support").fill("Customer care")
    await screen(page, "campaigns-rename")
    await page.keyboard.press("Enter")
    await expect(rows.first).to_contain_text("Customer care")
    assert (await seed.get("/campaigns/support")).json()["name"] == "Customer care"

    used = await seed.post(
        "/channels", json={"name": "Support mailbox", "default_campaign_id": "support"}
    )
    assert used.status_code == 201, used.text
    await page.get_by_role("button", name="Delete campaign Customer care").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(page.locator("#message")).to_contain_text("Support mailbox")
    await expect(rows).to_have_count(1)
    await screen(page, "campaigns")

    assert (await seed.delete(f"/channels/{used.json()['id']}")).status_code == 204
    await page.get_by_role("button", name="Delete campaign Customer care").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(page.get_by_text("No campaigns yet.")).to_be_visible()
    assert (await seed.get("/campaigns/support")).status_code == 404
