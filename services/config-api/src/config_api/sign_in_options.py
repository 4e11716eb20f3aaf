"""What the admin page needs to offer sign-in: ``GET /auth/config``.

Open (the page asks before anyone signed in) and holding nothing secret: the OIDC issuer, the
page's public client id, the scopes and the redirect path, all from the ``CONFIG_API_OIDC_*``
settings. The page discovers the provider's endpoints itself (``.well-known/openid-configuration``)
and signs in with the authorization code flow and PKCE; the token it gets is verified by
:mod:`config_api.auth` like any other bearer token. The local admin token and API tokens are
always accepted besides.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures at runtime.

from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter
from pydantic import BaseModel

from config_api.api import RuntimeDep
from config_api.settings import ConfigApiSettings

router = APIRouter(tags=["sign-in"])


class OidcClient(BaseModel):
    issuer: str
    client_id: str
    scopes: str
    redirect_path: str
    """Absolute path (with the root path) the provider sends the browser back to."""


class SignInOptions(BaseModel):
    methods: list[Literal["oidc", "token"]]
    """``oidc`` when configured; ``token`` (admin or API token) always."""
    oidc: OidcClient | None


def sign_in_options(settings: ConfigApiSettings) -> SignInOptions:
    if not settings.oidc_page_enabled:
        return SignInOptions(methods=["token"], oidc=None)
    assert settings.oidc_issuer is not None
    assert settings.oidc_client_id is not None
    return SignInOptions(
        methods=["oidc", "token"],
        oidc=OidcClient(
            issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id,
            scopes=settings.oidc_scopes,
            redirect_path=settings.root_path.rstrip("/") + settings.oidc_redirect_path,
        ),
    )


def connect_origins(settings: ConfigApiSettings) -> list[str]:
    """Origins the page must reach for OIDC sign-in: the issuer's, plus any configured."""
    if not settings.oidc_page_enabled:
        return []
    assert settings.oidc_issuer is not None
    issuer = urlsplit(settings.oidc_issuer)
    extra = [o.strip().rstrip("/") for o in settings.oidc_connect_origins.split(",")]
    return list(dict.fromkeys([f"{issuer.scheme}://{issuer.netloc}", *filter(None, extra)]))


@router.get("/auth/config")
async def auth_config(runtime: RuntimeDep) -> SignInOptions:
    """How the admin page can sign in (open; nothing secret)."""
    return sign_in_options(runtime.settings)
