"""OIDC sign-in in a real browser: the page signs in through the identity stand-in
(authorization code + PKCE, a public client), the API verifies the access token against the
stand-in's JWKS and maps its role claim; an admin can write, a viewer sees no write controls,
and an expired sign-in goes back to the sign-in screen with a message."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect

from devstack.graph import AppRegistration

from .conftest import SCREENSHOTS, serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from playwright.async_api import Page

    from config_api.settings import ConfigApiSettings
    from devstack.graph import LocalGraph

pytestmark = [pytest.mark.integration]

API_AUDIENCE = "api://email-channels-test"
ADMIN_USER = "ada@contoso.test"
VIEWER_USER = "victor@contoso.test"
NO_ROLE_USER = "nora@contoso.test"


class Tenant:
    """The stand-in tenant: the admin page's app registration and two users with app roles."""

    def __init__(self, graph: LocalGraph) -> None:
        self.graph = graph
        self.tenant_id = f"tenant-{uuid.uuid4().hex[:6]}"
        self.client_id = str(uuid.uuid4())
        self.issuer = f"{graph.base_url}/{self.tenant_id}/v2.0"

    def register(self, page_url: str) -> None:
        self.graph.register_app(
            AppRegistration(
                tenant_id=self.tenant_id,
                client_id=self.client_id,
                client_secret="",
                redirect_uris=(f"{page_url}/",),
                public_client=True,
                api_audience=API_AUDIENCE,
            )
        )
        self.graph.add_user(ADMIN_USER, roles=("EmailChannels.Admin",))
        self.graph.add_user(VIEWER_USER, roles=("EmailChannels.Viewer",))
        self.graph.add_user(NO_ROLE_USER)


@pytest.fixture
def tenant(local_graph: LocalGraph) -> Tenant:
    return Tenant(local_graph)


@pytest.fixture
async def oidc_url(browser_settings: ConfigApiSettings, tenant: Tenant) -> AsyncIterator[str]:
    """config-api with OIDC sign-in for the page (and the admin token kept for `make run`)."""
    settings = browser_settings.model_copy(
        update={
            "oidc_issuer": tenant.issuer,
            "oidc_audience": API_AUDIENCE,
            "oidc_jwks_url": f"{tenant.graph.base_url}/{tenant.tenant_id}/discovery/v2.0/keys",
            "oidc_client_id": tenant.client_id,
            "oidc_scopes": f"openid profile {API_AUDIENCE}/access_as_user",
            "oidc_admin_roles": "EmailChannels.Admin",
            "oidc_viewer_roles": "EmailChannels.Viewer",
        }
    )
    async with serving(settings) as url:
        tenant.register(url)
        yield url


async def _sign_in(page: Page, url: str, user: str, *, lands: bool = True) -> None:
    await page.goto(url)
    await page.get_by_role("button", name="Sign in with your organisation").click()
    await page.get_by_label("Email or username").fill(user)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    if lands:
        await expect(page.get_by_role("heading", name="Channels", exact=True)).to_be_visible()


async def test_oidc_sign_in_as_admin_can_write(
    new_page: Callable[..., Awaitable[Page]],
    oidc_url: str,
    tenant: Tenant,
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """The sign-in screen offers the organisation's sign-in and the token; signing in through
    the provider as an admin lands on the channel list as that user with role admin (the code
    is gone from the address), a campaign can be created, and Sign out returns to sign-in."""
    page = await new_page(ignore_https_errors=True)  # the stand-in's certificate: devstack CA
    await page.goto(oidc_url)
    oidc_button = page.get_by_role("button", name="Sign in with your organisation")
    await expect(oidc_button).to_be_focused()
    await expect(page.get_by_label("Access token")).to_be_visible()
    await screen(page, "sign-in-oidc")

    await oidc_button.click()
    await expect(page.get_by_label("Email or username")).to_be_visible()
    assert page.url.startswith(tenant.issuer.removesuffix("/v2.0") + "/oauth2/v2.0/authorize?")
    await page.screenshot(path=SCREENSHOTS / "identity-provider-sign-in.png")
    await page.get_by_label("Email or username").fill(ADMIN_USER)
    await page.get_by_role("button", name="Sign in", exact=True).click()

    await expect(page.get_by_role("heading", name="Channels", exact=True)).to_be_visible()
    await expect(page.locator("#whoami")).to_have_text(f"{ADMIN_USER} (admin)")
    assert "code=" not in page.url
    assert "state=" not in page.url
    await page.get_by_role("link", name="Campaigns").click()
    view = page.locator("#campaigns-view")
    await view.get_by_label("Name", exact=True).fill("Signed-in campaign")
    await view.get_by_role("button", name="Create campaign").click()
    await expect(page.locator("#campaign-rows")).to_contain_text("Signed-in campaign")
    await screen(page, "signed-in-oidc-admin")

    await page.reload()  # the session survives a reload (sessionStorage)
    await expect(page.locator("#whoami")).to_have_text(f"{ADMIN_USER} (admin)")
    await page.get_by_role("button", name="Sign out").click()
    await expect(oidc_button).to_be_visible()


async def test_oidc_viewer_sees_no_write_controls_and_an_expired_sign_in_asks_again(
    new_page: Callable[..., Awaitable[Page]],
    oidc_url: str,
    tenant: Tenant,
    screen: Callable[[Page, str], Awaitable[None]],
) -> None:
    """Signed in through the provider as a viewer: role viewer shown, no New channel, no bulk
    bar, no Create campaign; a user with neither role is back at sign-in with the API's 403
    reason; when the access token's lifetime ends the page returns to the sign-in screen saying
    the sign-in expired."""
    page = await new_page(ignore_https_errors=True)
    await _sign_in(page, oidc_url, VIEWER_USER)
    await expect(page.locator("#whoami")).to_have_text(f"{VIEWER_USER} (viewer)")
    await expect(page.get_by_role("button", name="New channel")).to_be_hidden()
    await expect(page.get_by_role("button", name="Disable", exact=True)).to_be_hidden()
    await page.get_by_role("link", name="Campaigns").click()
    await expect(page.get_by_role("button", name="Create campaign")).to_be_hidden()
    await screen(page, "signed-in-oidc-viewer")
    await page.get_by_role("button", name="Sign out").click()

    await _sign_in(page, oidc_url, NO_ROLE_USER, lands=False)
    await expect(page.locator("#sign-in-message")).to_contain_text(
        "holds neither an admin nor a viewer role"
    )
    await expect(page.locator("#whoami")).to_be_hidden()

    tenant.graph.access_token_lifetime_s = 3
    await _sign_in(page, oidc_url, VIEWER_USER)
    message = page.locator("#sign-in-message")
    await expect(message).to_have_text(
        "Your sign-in has expired: please sign in again.", timeout=10_000
    )
    await expect(page.get_by_role("button", name="Sign in with your organisation")).to_be_focused()
    await screen(page, "sign-in-expired")
