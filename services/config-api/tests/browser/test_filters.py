"""The filters window in a real browser: add three filters, reorder them from the keyboard,
test a message against them, delete one; the channel list counts them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx
    from playwright.async_api import Locator, Page

pytestmark = [pytest.mark.integration]


async def _campaign(seed: httpx.AsyncClient, name: str) -> str:
    response = await seed.post("/campaigns", json={"name": name})
    assert response.status_code == 201, response.text
    campaign_id: str = response.json()["id"]
    return campaign_id


async def _seed_channel(seed: httpx.AsyncClient) -> str:
    """Four campaigns and a channel whose default is Support; returns the channel id."""
    support = await _campaign(seed, "Support")
    for name in ("Billing", "Sales", "Complaints"):
        await _campaign(seed, name)
    created = await seed.post(
        "/channels", json={"name": "Support mailbox", "default_campaign_id": support}
    )
    assert created.status_code == 201, created.text
    channel_id: str = created.json()["id"]
    return channel_id


async def _add_filter(dialog: Locator, name: str, campaign: str, **keywords: str) -> None:
    await dialog.get_by_role("button", name="Add filter").click()
    form = dialog.locator("#filter-form")
    await form.get_by_label("Name").fill(name)
    await form.get_by_label("Target campaign").select_option(label=campaign)
    for label, words in keywords.items():
        await form.get_by_label(label.replace("_", " ").capitalize() + " keywords").fill(words)
    await form.get_by_role("button", name="Save filter").click()
    await expect(form).to_be_hidden()


async def _bad_regex_is_refused_next_to_its_field(dialog: Locator) -> None:
    """A regular expression the router could not run safely is refused at save time, and the
    error stands next to the Regular expression field; nothing is added."""
    await dialog.get_by_role("button", name="Add filter").click()
    form = dialog.locator("#filter-form")
    await form.get_by_label("Name").fill("Broken")
    await form.get_by_label("Target campaign").select_option(label="Sales")
    await form.get_by_label("Regular expression").fill("(a+)+\\1")
    await form.get_by_role("button", name="Save filter").click()
    await expect(form.get_by_label("Regular expression")).to_have_attribute("aria-invalid", "true")
    await expect(form.locator("#f-regex-error")).to_be_visible()
    await form.get_by_role("button", name="Cancel").click()
    await expect(dialog.locator("#filter-list > li")).to_have_count(3)


async def _header_condition_round_trips(dialog: Locator) -> None:
    """A filter with only a header condition is saved, listed, and opened again for editing."""
    await dialog.get_by_role("button", name="Add filter").click()
    form = dialog.locator("#filter-form")
    await form.get_by_label("Name").fill("Newsletters")
    await form.get_by_label("Target campaign").select_option(label="Sales")
    await form.get_by_label("Header conditions").fill("List-Id: news.example")
    await form.get_by_role("button", name="Save filter").click()
    items = dialog.locator("#filter-list > li")
    await expect(items).to_have_count(3)
    await expect(items.nth(2)).to_contain_text("List-Id: news.example")
    await dialog.get_by_role("button", name="Edit Newsletters").click()
    await expect(form.get_by_label("Header conditions")).to_have_value("List-Id: news.example")
    await form.get_by_role("button", name="Cancel").click()


async def test_three_filters_reordered_and_a_message_tested(
    page: Page,
    seed: httpx.AsyncClient,
    sign_in: Callable[[Page], Awaitable[None]],
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """Filters are added in order, moved with the keyboard, and "test a message" names the
    first filter that matches, or the default campaign when none does; a header-field
    condition round-trips through the form."""
    channel_id = await _seed_channel(seed)
    await sign_in(page)

    await page.get_by_role("button", name="Options for Support mailbox").click()
    await page.get_by_role("menuitem", name="Filters").click()
    dialog = page.get_by_role("dialog", name="Filters of Support mailbox")
    await expect(dialog.get_by_text("No filters")).to_be_visible()
    await expect(dialog.locator("#filters-intro")).to_contain_text("Support")

    await _add_filter(dialog, "Invoices", "Billing", subject="invoice, receipt")
    await _add_filter(dialog, "Orders", "Sales", body="order")
    await _add_filter(dialog, "Angry customers", "Complaints", sender="angry", subject="complaint")
    items = dialog.locator("#filter-list > li")
    await expect(items).to_have_count(3)
    await _bad_regex_is_refused_next_to_its_field(dialog)
    await expect(items.nth(2)).to_contain_text("sender: angry")

    up = dialog.get_by_role("button", name="Move Angry customers up")
    await up.focus()
    await page.keyboard.press("Enter")
    await expect(items.nth(1)).to_contain_text("Angry customers")
    await expect(up).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(items.nth(0)).to_contain_text("Angry customers")
    await expect(items.nth(1)).to_contain_text("Invoices")
    await expect(items.nth(2)).to_contain_text("Orders")

    test = dialog.locator("#test-form")
    await test.get_by_label("From").fill("alice@customer.example")
    await test.get_by_label("Subject").fill("Invoice for my order")
    await test.get_by_label("Body").fill("Where is my order?")
    await test.get_by_role("button", name="Test").click()
    result = dialog.locator("#test-result")
    await expect(result).to_contain_text('Filter "Invoices" (number 2) wins')
    await expect(result).to_contain_text("Billing")
    await screen(page, "filters")

    await test.get_by_label("Subject").fill("Hello")
    await test.get_by_label("Body").fill("Just saying hello.")
    await test.get_by_role("button", name="Test").click()
    await expect(result).to_contain_text("No filter matches")
    await expect(result).to_contain_text("Support")

    stored = (await seed.get(f"/channels/{channel_id}/filters")).json()
    assert [f["name"] for f in stored["filters"]] == ["Angry customers", "Invoices", "Orders"]

    await dialog.get_by_role("button", name="Delete Orders").click()
    await (
        page.get_by_role("dialog", name="Are you sure?")
        .get_by_role("button", name="Delete")
        .click()
    )
    await expect(items).to_have_count(2)

    await _header_condition_round_trips(dialog)

    await dialog.get_by_role("button", name="Close").click()
    row = page.locator("#channel-rows tr", has_text="Support mailbox")
    await expect(row.locator("td[data-label=Filters]")).to_have_text("3")
