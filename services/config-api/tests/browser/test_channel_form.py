"""The create / edit window in a real browser: the activation rule, IMAP settings saved with
a write-only password, errors next to the field the API names, and Validate against the real
Dovecot (green, then a wrong password failing at its step)."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest
from playwright.async_api import expect

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx
    from playwright.async_api import Locator, Page

    from devstack.dovecot import Dovecot
    from devstack.pytest_plugin import MailUser
    from devstack.smtp import SmtpServer

pytestmark = [pytest.mark.integration]


async def _fill_imap(dialog: Locator, dovecot: Dovecot, user: str, password: str) -> None:
    receiving = dialog.locator("#inbound-section")
    await receiving.get_by_label("Type").select_option("imap")
    await receiving.get_by_label("Host").fill(dovecot.host)
    await receiving.get_by_label("Port").fill(str(dovecot.imaps_port))
    await receiving.get_by_label("Security").select_option("ssl")
    await receiving.get_by_label("Username").fill(user)
    await receiving.get_by_label("Password").fill(password)


async def _escape_asks_before_discarding(page: Page, dialog: Locator) -> None:
    """Escape in a changed window asks first; answering Cancel keeps the window and its input."""
    await page.keyboard.press("Escape")
    discard = page.get_by_role("dialog", name="Discard your changes?")
    await expect(discard).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(discard).to_be_hidden()
    await expect(dialog.get_by_label("Name", exact=True)).to_have_value("Support mailbox")


async def _only_offered_kinds_can_be_chosen(page: Page, seed: httpx.AsyncClient) -> None:
    """The server types offered in the window are those the API's OpenAPI document takes."""
    schemas = (await seed.get(seed.base_url.join("/openapi.json"))).json()["components"]["schemas"]
    for direction, select in (("inbound", "#in-kind"), ("outbound", "#out-kind")):
        refs = re.findall(
            r"#/components/schemas/(\w+)", json.dumps(schemas["ChannelIn"]["properties"][direction])
        )
        taken = {schemas[ref]["properties"]["kind"]["const"] for ref in refs}
        offered = await page.eval_on_selector_all(
            f"{select} option:not([value=''])",
            "options => options.filter(o => !o.disabled).map(o => o.value)",
        )
        assert set(offered) == taken, direction


async def _only_channel(seed: httpx.AsyncClient) -> dict[str, Any]:
    [channel] = (await seed.get("/channels")).json()["items"]
    return dict(channel)


async def test_activation_rule_imap_settings_and_field_errors(
    page: Page,
    seed: httpx.AsyncClient,
    dovecot: Dovecot,
    mail_user: MailUser,
    smtp_server: SmtpServer,
    sign_in: Callable[[Page], Awaitable[None]],
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """Activation stays disabled until a default campaign is chosen; a missing host is shown
    next to the Host field; the saved password is shown only as "set" and kept on edit; SMTP
    sending settings validate green; Escape with unsaved changes asks first."""
    assert (await seed.post("/campaigns", json={"name": "Support"})).status_code == 201
    await sign_in(page)
    await page.get_by_role("button", name="New channel").click()
    dialog = page.get_by_role("dialog", name="New channel")
    activated = dialog.get_by_label("Activated")
    await expect(activated).to_be_disabled()
    await expect(dialog.locator("#ch-enabled-hint")).to_contain_text("Choose a default campaign")

    await _only_offered_kinds_can_be_chosen(page, seed)
    await dialog.get_by_label("Name", exact=True).fill("Support mailbox")
    await _escape_asks_before_discarding(page, dialog)
    await dialog.get_by_label("Email address").fill(mail_user.address)
    await _fill_imap(dialog, dovecot, mail_user.user, mail_user.password)
    await dialog.locator("#inbound-section").get_by_label("Host").fill("")
    await screen(page, "channel-new")
    await dialog.get_by_role("button", name="Save").click()
    host = dialog.locator("#inbound-section").get_by_label("Host")
    await expect(host).to_have_attribute("aria-invalid", "true")
    await expect(dialog.locator("#in-host-error")).to_be_visible()
    await expect(host).to_be_focused()

    await host.fill(dovecot.host)
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#channel-rows")).to_contain_text("Support mailbox")
    saved = await _only_channel(seed)
    assert saved["inbound"]["host"] == dovecot.host
    assert saved["inbound"]["port"] == dovecot.imaps_port
    assert saved["inbound"]["password_set"] is True
    assert saved["enabled"] is False

    await page.get_by_role("button", name="Options for Support mailbox").click()
    await page.get_by_role("menuitem", name="Edit").click()
    dialog = page.get_by_role("dialog", name="Edit channel Support mailbox")
    password = dialog.locator("#inbound-section").get_by_label("Password")
    await expect(password).to_have_value("")
    await expect(password).to_have_attribute("placeholder", "set — leave empty to keep it")
    await expect(dialog.locator("#in-password-state")).to_contain_text("A value is set")
    await expect(dialog.get_by_label("Activated")).to_be_disabled()
    await dialog.get_by_label("Default campaign").select_option(label="Support")
    await expect(dialog.get_by_label("Activated")).to_be_enabled()
    await dialog.get_by_label("Activated").check()
    await _fill_smtp_and_validate(dialog, smtp_server)
    await screen(page, "channel-edit")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    # The keyboard focus comes back to the row the window was opened from.
    await expect(page.get_by_role("button", name="Options for Support mailbox")).to_be_focused()
    saved = await _only_channel(seed)
    assert (saved["enabled"], saved["default_campaign_name"]) == (True, "Support")
    assert (saved["inbound"]["password_set"], saved["outbound"]["password_set"]) == (True, True)
    assert saved["outbound"]["port"] == smtp_server.port


async def _fill_smtp_and_validate(dialog: Locator, smtp: SmtpServer) -> None:
    """Sending over the test SMTP server (STARTTLS + AUTH) validates green."""
    assert smtp.credentials is not None
    sending = dialog.locator("#outbound-section")
    await sending.get_by_label("Type").select_option("smtp")
    await sending.get_by_label("Host").fill(smtp.host)
    await sending.get_by_label("Port").fill(str(smtp.port))
    await sending.get_by_label("Security").select_option("starttls")
    await sending.get_by_label("Username").fill(smtp.credentials[0])
    await sending.get_by_label("Password").fill(smtp.credentials[1])
    await sending.get_by_role("button", name="Validate sending").click()
    await expect(sending.locator(".validate-headline")).to_have_text(
        "Validated: every step passed.", timeout=60_000
    )


async def test_validate_green_wrong_password_fails_at_auth_then_active(
    page: Page,
    seed: httpx.AsyncClient,
    dovecot: Dovecot,
    mail_user: MailUser,
    sign_in: Callable[[Page], Awaitable[None]],
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """Validate against the real Dovecot passes every step; a wrong password fails at "auth",
    and once saved and validated the list shows the channel Inactive with that step; with the
    right password validated again it shows Active."""
    assert (await seed.post("/campaigns", json={"name": "Support"})).status_code == 201
    await sign_in(page)
    await page.get_by_role("button", name="New channel").click()
    dialog = page.get_by_role("dialog", name="New channel")
    await dialog.get_by_label("Name", exact=True).fill("Support mailbox")
    await dialog.get_by_label("Default campaign").select_option(label="Support")
    await dialog.get_by_label("Activated").check()
    await _fill_imap(dialog, dovecot, mail_user.user, mail_user.password)
    receiving = dialog.locator("#inbound-section")
    result = receiving.locator(".validate-result")
    await receiving.get_by_role("button", name="Validate receiving").click()
    await expect(result.locator(".validate-headline")).to_have_text(
        "Validated: every step passed.", timeout=60_000
    )
    await expect(result.locator(".steps li.failed")).to_have_count(0)
    for step in ("dns", "folder:INBOX"):
        await expect(result.locator(".steps li.ok", has_text=step)).to_have_count(1)
    await screen(page, "channel-validate-ok")

    await receiving.get_by_label("Password").fill("not-the-password")
    await receiving.get_by_role("button", name="Validate receiving").click()
    await expect(result.locator(".validate-headline")).to_contain_text(
        'Failed at step "auth"', timeout=60_000
    )
    await expect(result.locator(".steps li.failed")).to_have_count(1)
    await screen(page, "channel-validate-failed")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()

    row = page.locator("#channel-rows tr", has_text="Support mailbox")
    await expect(row.locator(".badge")).to_have_text("Inactive")
    await _validate_saved(page)
    await expect(row.locator(".badge")).to_have_text("Inactive")
    await expect(row.locator(".step")).to_have_text("failing step: auth (receiving)")
    await expect(row.locator(".reason")).not_to_be_empty()
    await screen(page, "channel-list-failing")

    await page.get_by_role("button", name="Options for Support mailbox").click()
    await page.get_by_role("menuitem", name="Edit").click()
    dialog = page.get_by_role("dialog", name="Edit channel Support mailbox")
    await dialog.locator("#inbound-section").get_by_label("Password").fill(mail_user.password)
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    await _validate_saved(page)
    await expect(row.locator(".badge")).to_have_text("Active")
    assert (await _only_channel(seed))["status"]["state"] == "active"


async def _validate_saved(page: Page) -> None:
    """Open the saved channel unchanged and validate it: the outcome is recorded."""
    await page.get_by_role("button", name="Options for Support mailbox").click()
    await page.get_by_role("menuitem", name="Edit").click()
    dialog = page.get_by_role("dialog", name="Edit channel Support mailbox")
    receiving = dialog.locator("#inbound-section")
    await receiving.get_by_role("button", name="Validate receiving").click()
    await expect(receiving.locator(".validate-headline")).to_be_visible(timeout=60_000)
    await dialog.get_by_role("button", name="Cancel").click()
