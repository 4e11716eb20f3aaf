"""Exchange Online "Save and authorise" in a real browser, end to end against the identity
stand-in: the page saves the channel and starts the API's delegated sign-in, the browser goes
to the stand-in's authorize page, Microsoft's form_post answer reaches the API's callback, and
the callback sends the browser back to the page, which shows the outcome."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect

from devstack.graph import AppRegistration

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx
    from playwright.async_api import Page

    from devstack.graph import LocalGraph

pytestmark = [pytest.mark.integration]

MAILBOX = "support@contoso.test"
SECRET = "app~secret.value"


async def test_save_and_authorise_round_trip_shows_the_error_then_authorised(
    new_page: Callable[..., Awaitable[Page]],
    admin_url: str,
    seed: httpx.AsyncClient,
    local_graph: LocalGraph,
    sign_in: Callable[[Page], Awaitable[None]],
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """An app-only Exchange channel is switched to delegated in the edit window: the redirect
    URI to register is shown; Save and authorise with a wrong client secret comes back from the
    Microsoft sign-in with the error naming the secret; with the right one it comes back
    authorised (shown in the window and stored on the channel). A crafted link carrying an
    outcome shows nothing."""
    local_graph.add_mailbox(MAILBOX)
    callback = f"{admin_url}/oauth/callback"
    app = local_graph.register_app(
        AppRegistration(
            tenant_id=f"tenant-{uuid.uuid4().hex[:6]}",
            client_id=str(uuid.uuid4()),
            client_secret=SECRET,
            redirect_uris=(callback,),
            user=MAILBOX,
        )
    )
    created = await seed.post(
        "/channels",
        json={
            "name": "Exchange support",
            "email_address": MAILBOX,
            "inbound": {
                "kind": "graph",
                "tenant_id": app.tenant_id,
                "client_id": app.client_id,
                "client_secret": "wrong~secret",
                "mailbox": MAILBOX,
                "authority_host": local_graph.authority_host,
                "graph_url": local_graph.graph_url,
            },
        },
    )
    assert created.status_code == 201, created.text
    channel_id = created.json()["id"]
    page = await new_page(ignore_https_errors=True)  # the stand-in's certificate: devstack CA
    await sign_in(page)

    async def edit() -> None:
        await page.get_by_role("button", name="Options for Exchange support").click()
        await page.get_by_role("menuitem", name="Edit").click()

    await edit()
    dialog = page.get_by_role("dialog", name="Edit channel Exchange support")
    receiving = dialog.locator("#inbound-section")
    authorise = dialog.get_by_role("button", name="Save and authorise")
    await expect(authorise).to_be_hidden()
    await receiving.get_by_label("Sign-in").select_option("delegated")
    await expect(authorise).to_be_visible()
    await expect(receiving.locator("#in-auth-state")).to_have_text(
        "Not authorised yet: use Save and authorise to sign in with Microsoft."
    )
    await expect(receiving.locator("#in-auth-hint")).to_contain_text(callback)
    await screen(page, "channel-exchange-delegated")
    await authorise.click()

    # Microsoft's sign-in, its form_post to the API's callback, and back to the page.
    message = page.locator("#message")
    await expect(message).to_contain_text(
        'The Microsoft sign-in for "Exchange support" did not complete'
    )
    await expect(message).to_contain_text("client secret")
    assert "authorise_error" not in page.url
    await expect(dialog).to_be_visible()  # reopened: fix and try again
    await expect(receiving.locator("#in-auth-state")).to_contain_text("Not authorised yet")

    await receiving.get_by_label("Client secret").fill(SECRET)
    await authorise.click()
    await expect(message).to_have_text(
        'Exchange Online access for "Exchange support" is authorised.'
    )
    await expect(receiving.locator("#in-auth-state")).to_contain_text("Authorised by admin-token")
    assert "authorised=" not in page.url
    await screen(page, "channel-exchange-authorised")

    shown = (await seed.get(f"/channels/{channel_id}")).json()
    assert shown["inbound"]["auth"] == "delegated"
    assert shown["inbound"]["authorised"] is True
    assert shown["inbound"]["authorised_by"] == "admin-token"
    assert ("GET", f"/{app.tenant_id}/oauth2/v2.0/authorize") in local_graph.requests

    # A crafted link with an outcome is not shown: only a sign-in started in this tab is.
    await page.goto(f"{admin_url}/?authorise_error=Call+0800&channel={channel_id}")
    await expect(page.locator("#channel-rows")).to_contain_text("Exchange support")
    await expect(page.locator("#message")).not_to_contain_text("0800")
    await expect(dialog).to_be_hidden()
    assert "authorise_error" not in page.url
