"""The app without a reachable Kafka: it starts, says why it is not ready, and refuses to guess.

No Kafka stand-in: the broker address points at a closed port, which is what a real outage
looks like to the service.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import httpx
import pytest

from config_api.app import StartupError, create_app, secret_box
from config_api.settings import ConfigApiSettings
from email_channels.secretbox import SecretBox
from email_channels.settings import CommonSettings, KafkaSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ADMIN_TOKEN = "app-test-admin-token-0123456789"


def settings_without_kafka() -> ConfigApiSettings:
    return ConfigApiSettings(
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed_port()}"),
        common=CommonSettings(secret_keys=f"k1:{SecretBox.generate_key()}"),
        startup_timeout_s=2,
        admin_token=ADMIN_TOKEN,
        trusted_hosts="api",
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_without_kafka())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as c,
    ):
        yield c


async def test_up_but_not_ready_while_kafka_is_unreachable(client: httpx.AsyncClient) -> None:
    """/healthz answers, /readyz and the API answer 503 with a reason and Retry-After."""
    assert (await client.get("/healthz")).status_code == 200

    ready = await client.get("/readyz")
    listing = await client.get("/api/v1/channels")

    assert ready.status_code == 503
    assert ready.json()["status"] == "not ready"
    assert listing.status_code == 503
    assert listing.headers["Retry-After"]
    assert listing.json()["detail"]


async def test_admin_page_and_metrics_are_served(client: httpx.AsyncClient) -> None:
    """The admin page comes with a strict CSP; its script is served; metrics are exposed."""
    page = await client.get("/")
    script = await client.get("/static/admin.js")
    metrics = await client.get("/metrics")

    assert page.status_code == 200
    assert "<title>Email Channels" in page.text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert script.status_code == 200
    assert "api/v1" in script.text
    assert metrics.status_code == 200
    assert "config_api_http_requests_total" in metrics.text
    assert 'config_api_http_requests_total{method="GET",route="/",status="200"}' in metrics.text


def test_refuses_to_start_without_secret_keys() -> None:
    """Without a keyring there is no way to store a password: fail at once, say what to set."""
    with pytest.raises(StartupError, match="EMAIL_CHANNELS_SECRET_KEYS is not set"):
        secret_box(CommonSettings(secret_keys=None))
    with pytest.raises(StartupError, match="EMAIL_CHANNELS_SECRET_KEYS is invalid"):
        secret_box(CommonSettings(secret_keys="k1:tooshort"))


def test_settings_read_their_own_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONFIG_API_* for the service, KAFKA_* and EMAIL_CHANNELS_* for the shared groups."""
    monkeypatch.setenv("CONFIG_API_PORT", "9999")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "dev.")
    monkeypatch.setenv("EMAIL_CHANNELS_LOG_LEVEL", "debug")

    settings = ConfigApiSettings()

    assert (settings.host, settings.port) == ("127.0.0.1", 9999)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.common.log_level == "debug"
    assert settings.transactional_id == "dev.config-api"


async def test_sign_in_options_are_open_and_the_csp_allows_the_issuer() -> None:
    """Without OIDC the page is told to take a token and may connect only to its own origin;
    with an issuer and a client id, GET /auth/config (no credentials) names them, the scopes
    and the redirect path, and connect-src allows the issuer's origin."""
    plain = create_app(settings_without_kafka())
    oidc = create_app(
        settings_without_kafka().model_copy(
            update={
                "oidc_issuer": "https://login.example.test/tenant-1/v2.0",
                "oidc_audience": "api://email-channels",
                "oidc_jwks_url": "https://login.example.test/tenant-1/discovery/v2.0/keys",
                "oidc_client_id": "page-client",
                "oidc_connect_origins": "https://tokens.example.test/",
            }
        )
    )
    for app, expected in ((plain, None), (oidc, "page-client")):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as anonymous:
            options = await anonymous.get("/auth/config")
            page = await anonymous.get("/")
        assert options.status_code == 200, options.text
        body = options.json()
        csp = page.headers["Content-Security-Policy"]
        if expected is None:
            assert body == {"methods": ["token"], "oidc": None}
            assert "connect-src" not in csp  # default-src 'self' only
        else:
            assert body == {
                "methods": ["oidc", "token"],
                "oidc": {
                    "issuer": "https://login.example.test/tenant-1/v2.0",
                    "client_id": "page-client",
                    "scopes": "openid profile email",
                    "redirect_path": "/",
                },
            }
            assert (
                "connect-src 'self' https://login.example.test https://tokens.example.test" in csp
            )
            assert "script-src" not in csp  # still only this origin's files (default-src)
