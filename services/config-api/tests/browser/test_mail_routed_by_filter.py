"""End to end from the admin page: a channel and a filter set up in the browser make mail
delivered into the real Dovecot mailbox come out on email.routed with the filter's campaign,
through the fetcher and router running as processes."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect

from devstack.mail import customer_mail
from devstack.pytest_plugin import E2E_ADMIN_TOKEN
from email_channels.codec import decode, header
from email_channels.consume import make_consumer
from email_channels.events import RoutedEmail

if TYPE_CHECKING:
    from playwright.async_api import Page

    from devstack.dovecot import Dovecot
    from devstack.processes import ServiceProcesses
    from devstack.pytest_plugin import MailUser
    from email_channels.settings import KafkaSettings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def _sign_in(page: Page, url: str) -> None:
    await page.goto(url)
    await page.get_by_label("Access token").fill(E2E_ADMIN_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Channels", exact=True)).to_be_visible()


async def _create_campaign(page: Page, name: str, campaign_id: str) -> None:
    view = page.locator("#campaigns-view")
    await view.get_by_label("Name", exact=True).fill(name)
    await view.get_by_label("Id (optional)").fill(campaign_id)
    await view.get_by_role("button", name="Create campaign").click()
    await expect(page.locator("#campaign-rows")).to_contain_text(name)


async def _create_channel_with_filter(page: Page, dovecot: Dovecot, mail_user: MailUser) -> None:
    await page.get_by_role("link", name="Channels").click()
    await page.get_by_role("button", name="New channel").click()
    dialog = page.get_by_role("dialog", name="New channel")
    await dialog.get_by_label("Name", exact=True).fill("Support mailbox")
    await dialog.get_by_label("Email address").fill(mail_user.address)
    await dialog.get_by_label("Default campaign").select_option(label="Support")
    await dialog.get_by_label("Activated").check()
    receiving = dialog.locator("#inbound-section")
    await receiving.get_by_label("Type").select_option("imap")
    await receiving.get_by_label("Host").fill(dovecot.host)
    await receiving.get_by_label("Port").fill(str(dovecot.imaps_port))
    await receiving.get_by_label("Username").fill(mail_user.user)
    await receiving.get_by_label("Password").fill(mail_user.password)
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()

    await page.get_by_role("button", name="Options for Support mailbox").click()
    await page.get_by_role("menuitem", name="Filters").click()
    filters = page.get_by_role("dialog", name="Filters of Support mailbox")
    await filters.get_by_role("button", name="Add filter").click()
    form = filters.locator("#filter-form")
    await form.get_by_label("Name").fill("Invoices")
    await form.get_by_label("Target campaign").select_option(label="Billing")
    await form.get_by_label("Subject keywords").fill("invoice")
    await form.get_by_role("button", name="Save filter").click()
    await expect(filters.locator("#filter-list > li")).to_have_count(1)
    await filters.get_by_role("button", name="Close").click()


async def test_mail_is_routed_by_a_filter_set_up_in_the_page(
    page: Page,
    four_services: tuple[ServiceProcesses, str],
    kafka_settings: KafkaSettings,
    dovecot: Dovecot,
    mail_user: MailUser,
) -> None:
    """Campaigns, an activated IMAP channel and an "invoice" filter made in the page route a
    delivered invoice question to the filter's campaign, not the default one."""
    processes, url = four_services
    run = uuid.uuid4().hex[:8]
    await _sign_in(page, url)

    await page.get_by_role("link", name="Campaigns").click()
    await _create_campaign(page, "Support", f"support-{run}")
    await _create_campaign(page, "Billing", f"billing-{run}")

    await _create_channel_with_filter(page, dovecot, mail_user)

    subject = f"Invoice copy please {run}"
    dovecot.deliver(
        mail_user.user, customer_mail(mail_user.address, subject, body="Please send me a copy.\n")
    )

    consumer = make_consumer(
        kafka_settings, kafka_settings.topics.routed, group_id=None, client_id="browser-e2e"
    )
    await consumer.start()
    try:
        routed: RoutedEmail | None = None
        campaign_header: str | None = None
        for _ in range(120):
            processes.check_alive()
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    event = decode(RoutedEmail, record.value)
                    if event.subject == subject:
                        routed, campaign_header = event, header(record.headers, "campaign-id")
            if routed is not None:
                break
        assert routed is not None, "the delivered mail never appeared on email.routed"
    finally:
        await consumer.stop()

    assert routed.campaign_id == f"billing-{run}"
    assert campaign_header == f"billing-{run}"
    assert routed.reason.kind == "filter"
