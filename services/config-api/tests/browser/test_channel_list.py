"""The channel list in a real browser: quick and advanced search, paging, bulk disable, delete
through the row menu with the keyboard, and the narrow-screen layout."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest
from playwright.async_api import expect

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx
    from playwright.async_api import Page

pytestmark = [pytest.mark.integration]


async def _campaign(seed: httpx.AsyncClient, name: str) -> str:
    response = await seed.post("/campaigns", json={"name": name})
    assert response.status_code == 201, response.text
    campaign_id: str = response.json()["id"]
    return campaign_id


async def _channel(seed: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await seed.post("/channels", json=fields)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _seed_shops(seed: httpx.AsyncClient) -> tuple[str, str]:
    support = await _campaign(seed, "Support")
    sales = await _campaign(seed, "Sales")
    for number in range(1, 27):
        await _channel(
            seed,
            name=f"Shop {number:02}",
            email_address=f"shop{number:02}@example.test",
            default_campaign_id=support,
            enabled=True,
        )
    await _channel(
        seed,
        name="Billing desk",
        email_address="billing@example.test",
        default_campaign_id=sales,
        enabled=True,
    )
    return support, sales


def _rows(page: Page) -> Any:
    return page.locator("#channel-rows tr")


async def test_search_paging_and_bulk_disable(
    page: Page,
    seed: httpx.AsyncClient,
    sign_in: Callable[[Page], Awaitable[None]],
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """27 channels page by 25, each page fetched from the API (limit/offset, total); quick and
    advanced search narrow the list; selecting a page of results and pressing Disable turns
    exactly those channels off."""
    await _seed_shops(seed)
    await sign_in(page)

    await expect(_rows(page)).to_have_count(25)
    await expect(page.locator("#page-info")).to_have_text("1-25 of 27 · page 1 of 2")
    await expect(_rows(page).first).to_contain_text("Billing desk")
    await expect(_rows(page).first).to_contain_text("Inactive")
    await expect(_rows(page).first).to_contain_text("Sales")
    await screen(page, "channel-list")
    # The page asks the API for one page at a time: the second page is two channels of 27.
    async with page.expect_response(lambda r: "/api/v1/channels?" in r.url) as listed:
        await page.get_by_role("button", name="Next").click()
    response = await listed.value
    assert "limit=25" in response.url
    assert "offset=25" in response.url
    second = await response.json()
    assert (len(second["items"]), second["total"]) == (2, 27)
    await expect(page.locator("#page-info")).to_have_text("26-27 of 27 · page 2 of 2")
    await expect(_rows(page)).to_have_count(2)

    await page.get_by_label("Quick search").fill("bill")
    await expect(_rows(page)).to_have_count(1)
    await expect(_rows(page)).to_contain_text("Billing desk")
    await page.get_by_label("Quick search").fill("")

    await page.get_by_text("Advanced search").click()
    advanced = page.locator("#advanced-search")
    await advanced.get_by_label("Default campaign").select_option(label="Sales")
    await advanced.get_by_role("button", name="Search").click()
    await expect(_rows(page)).to_have_count(1)
    await expect(_rows(page)).to_contain_text("Billing desk")
    await advanced.get_by_role("button", name="Clear").click()
    await advanced.get_by_label("Email address").fill("shop07@")
    await advanced.get_by_role("button", name="Search").click()
    await expect(_rows(page)).to_have_count(1)
    await expect(_rows(page)).to_contain_text("Shop 07")
    await advanced.get_by_role("button", name="Clear").click()
    await advanced.get_by_label("Status").select_option("active")
    await advanced.get_by_role("button", name="Search").click()
    await expect(page.get_by_text("No channels match.")).to_be_visible()
    await screen(page, "channel-search")
    await advanced.get_by_role("button", name="Clear").click()

    await page.get_by_label("Quick search").fill("Shop 0")
    await expect(_rows(page)).to_have_count(9)
    await page.get_by_label("Select all channels on this page").check()
    await expect(page.locator("#selected-count")).to_have_text("9 selected")
    await page.get_by_role("button", name="Disable", exact=True).click()
    await expect(page.locator("#message")).to_have_text("9 channel(s) disabled.")
    await expect(_rows(page).filter(has_text=re.compile(r"Yes$"))).to_have_count(0)

    listing = (await seed.get("/channels", params={"q": "Shop"})).json()["items"]
    assert {c["name"] for c in listing if not c["enabled"]} == {f"Shop 0{n}" for n in range(1, 10)}
    assert all(c["enabled"] for c in listing if c["name"] >= "Shop 10")


async def test_delete_from_the_row_menu_with_the_keyboard(
    page: Page,
    seed: httpx.AsyncClient,
    sign_in: Callable[[Page], Awaitable[None]],
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """The row menu opens from the keyboard; Delete asks first, Cancel keeps the channel, and
    confirming deletes it for good."""
    doomed = await _channel(seed, name="Old mailbox")
    await _channel(seed, name="Kept mailbox")
    await sign_in(page)

    options = page.get_by_role("button", name="Options for Old mailbox")
    await options.focus()
    await page.keyboard.press("Enter")
    menu = page.get_by_role("menu", name="Options for Old mailbox")
    await expect(menu.get_by_role("menuitem", name="Edit")).to_be_focused()
    await screen(page, "row-menu")
    await page.keyboard.press("End")
    await expect(menu.get_by_role("menuitem", name="Delete")).to_be_focused()
    await page.keyboard.press("Enter")
    confirm = page.get_by_role("dialog", name="Are you sure?")
    await expect(confirm).to_contain_text('Delete channel "Old mailbox"')
    await page.keyboard.press("Escape")
    await expect(confirm).to_be_hidden()
    await expect(_rows(page)).to_have_count(2)

    await options.click()
    await menu.get_by_role("menuitem", name="Delete").click()
    await confirm.get_by_role("button", name="Delete").click()
    await expect(page.locator("#message")).to_have_text('Channel "Old mailbox" deleted.')
    await expect(_rows(page)).to_have_count(1)
    await expect(page.get_by_role("button", name="Options for Kept mailbox")).to_be_focused()
    assert (await seed.get(f"/channels/{doomed['id']}")).status_code == 404


async def test_narrow_screen_shows_channels_as_cards(
    narrow_page: Page,
    seed: httpx.AsyncClient,
    sign_in: Callable[[Page], Awaitable[None]],
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """On a phone-sized screen the list fits without sideways scrolling and the edit window
    is usable."""
    campaign = await _campaign(seed, "Support")
    await _channel(seed, name="Support mailbox", default_campaign_id=campaign, enabled=True)
    await sign_in(narrow_page)
    await expect(_rows(narrow_page)).to_have_count(1)
    width = await narrow_page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    await screen(narrow_page, "narrow-channel-list")
    await narrow_page.get_by_role("button", name="Options for Support mailbox").click()
    await narrow_page.get_by_role("menuitem", name="Edit").click()
    dialog = narrow_page.get_by_role("dialog", name="Edit channel Support mailbox")
    await expect(dialog.get_by_label("Name", exact=True)).to_have_value("Support mailbox")
    await screen(narrow_page, "narrow-channel-edit")
