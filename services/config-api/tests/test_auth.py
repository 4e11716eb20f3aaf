"""Sign-in without Kafka: OIDC JWTs checked against a JWKS these tests serve on loopback with
their own keys, the operator's admin token, and the host / body-size guards.

Kafka is unreachable here on purpose: sign-in must not depend on it (only stored API tokens
do, see test_auth_kafka.py), and a refused request must never reach the store.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from config_api.app import create_app
from config_api.settings import ConfigApiSettings
from email_channels.secretbox import SecretBox
from email_channels.settings import CommonSettings, KafkaSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

ISSUER = "https://idp.test.invalid/realms/email"
AUDIENCE = "email-channels-config-api"
ADMIN_TOKEN = "auth-test-admin-token-0123456789"
KID = "test-key-1"


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(signing_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """A JWKS document with the public half of ``signing_key``, served on 127.0.0.1."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    document = json.dumps({"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *_args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/certs"
    finally:
        server.shutdown()
        server.server_close()


def make_jwt(key: rsa.RSAPrivateKey, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "roles": ["admin"],
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


@pytest.fixture
async def client(jwks_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = ConfigApiSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),  # discard port: never ready
        common=CommonSettings(secret_keys=f"k1:{SecretBox.generate_key()}"),
        startup_timeout_s=1,
        admin_token=ADMIN_TOKEN,
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks_url=jwks_url,
        trusted_hosts="api",
        max_body_bytes=4096,
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c,
    ):
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_no_credentials_is_401_problem_json(client: httpx.AsyncClient) -> None:
    """Without a token an API route answers 401 problem+json with WWW-Authenticate: Bearer."""
    response = await client.get("/api/v1/channels")

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["status"] == 401
    assert "Authorization: Bearer" in response.json()["detail"]


async def test_health_page_and_docs_need_no_credentials(client: httpx.AsyncClient) -> None:
    """healthz, readyz, the admin page's files and the OpenAPI document stay open."""
    for path in ("/healthz", "/", "/static/admin.js", "/openapi.json"):
        assert (await client.get(path)).status_code == 200, path
    assert (await client.get("/readyz")).status_code == 503  # open, just not ready


async def test_admin_token_signs_in_as_admin(client: httpx.AsyncClient) -> None:
    """The operator's admin token is an admin; a wrong one is 401 invalid_token."""
    me = await client.get("/api/v1/me", headers=bearer(ADMIN_TOKEN))
    wrong = await client.get("/api/v1/me", headers=bearer(ADMIN_TOKEN + "x"))

    assert me.json() == {"subject": "admin-token", "role": "admin", "method": "admin-token"}
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]


async def test_valid_jwt_maps_roles(
    client: httpx.AsyncClient, signing_key: rsa.RSAPrivateKey
) -> None:
    """A JWT from the issuer signs in; its roles claim decides admin or viewer."""
    admin = await client.get("/api/v1/me", headers=bearer(make_jwt(signing_key)))
    viewer = await client.get(
        "/api/v1/me", headers=bearer(make_jwt(signing_key, sub="bob", roles="viewer"))
    )

    assert admin.json() == {"subject": "alice", "role": "admin", "method": "oidc"}
    assert viewer.json() == {"subject": "bob", "role": "viewer", "method": "oidc"}


async def test_viewer_cannot_write(
    client: httpx.AsyncClient, signing_key: rsa.RSAPrivateKey
) -> None:
    """A viewer's write is 403 problem+json, before anything else is looked at."""
    token = make_jwt(signing_key, roles=["viewer"])

    response = await client.post("/api/v1/campaigns", json={"name": "Sales"}, headers=bearer(token))

    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "needs role 'admin'" in response.json()["detail"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "some-other-api"}, "audience"),
        ({"iss": "https://evil.invalid"}, "issuer"),
        ({"sub": None}, "sub"),
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "no-subject"],
)
async def test_bad_jwt_is_401(
    client: httpx.AsyncClient,
    signing_key: rsa.RSAPrivateKey,
    overrides: dict[str, Any],
    expected: str,
) -> None:
    """An expired token, a wrong audience or issuer, a missing subject: 401 saying which."""
    response = await client.get("/api/v1/me", headers=bearer(make_jwt(signing_key, **overrides)))

    assert response.status_code == 401
    assert expected in response.json()["detail"].lower()


async def test_jwt_signed_by_another_key_is_401(client: httpx.AsyncClient) -> None:
    """Same kid, same claims, a key the JWKS does not hold: the signature does not verify."""
    forged = make_jwt(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    response = await client.get("/api/v1/me", headers=bearer(forged))

    assert response.status_code == 401
    assert "signature" in response.json()["detail"].lower()


async def test_jwt_without_known_role_is_403(
    client: httpx.AsyncClient, signing_key: rsa.RSAPrivateKey
) -> None:
    """Signed in but with no admin/viewer role: 403, not 401."""
    response = await client.get(
        "/api/v1/me", headers=bearer(make_jwt(signing_key, roles=["billing"]))
    )

    assert response.status_code == 403


async def test_untrusted_host_is_refused(client: httpx.AsyncClient) -> None:
    """A Host header outside CONFIG_API_TRUSTED_HOSTS is refused (DNS rebinding guard); the
    health probes answer whatever the host (Kubernetes probes use the pod IP)."""
    other = {"Host": "attacker.example"}
    page = await client.get("/", headers=other)
    api = await client.get("/api/v1/me", headers={**other, **bearer(ADMIN_TOKEN)})
    probe = await client.get("/healthz", headers={"Host": "10.1.2.3:8080"})

    assert page.status_code == 400
    assert api.status_code == 400
    assert probe.status_code == 200


async def test_large_body_is_413(client: httpx.AsyncClient) -> None:
    """A body over CONFIG_API_MAX_BODY_BYTES is refused with 413, declared or streamed."""
    declared = await client.post(
        "/api/v1/campaigns", content=b"x" * 5000, headers=bearer(ADMIN_TOKEN)
    )

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"y" * 1000

    streamed = await client.post("/api/v1/campaigns", content=chunks(), headers=bearer(ADMIN_TOKEN))

    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert declared.headers["content-type"] == "application/problem+json"


async def test_without_oidc_settings_no_jwt_is_accepted(signing_key: rsa.RSAPrivateKey) -> None:
    """Incomplete OIDC settings (no JWKS URL) turn the JWT path off: a valid JWT is 401."""
    settings = ConfigApiSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        common=CommonSettings(secret_keys=f"k1:{SecretBox.generate_key()}"),
        startup_timeout_s=1,
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        trusted_hosts="api",
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c,
    ):
        response = await c.get("/api/v1/me", headers=bearer(make_jwt(signing_key)))

    assert not settings.oidc_enabled
    assert response.status_code == 401


async def test_metrics_can_require_a_token() -> None:
    """With CONFIG_API_METRICS_REQUIRE_AUTH /metrics is 401 without a token, 200 with one."""
    settings = ConfigApiSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        common=CommonSettings(secret_keys=f"k1:{SecretBox.generate_key()}"),
        startup_timeout_s=1,
        admin_token=ADMIN_TOKEN,
        metrics_require_auth=True,
        trusted_hosts="api",
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c,
    ):
        anonymous = await c.get("/metrics")
        signed_in = await c.get("/metrics", headers=bearer(ADMIN_TOKEN))

    assert anonymous.status_code == 401
    assert signed_in.status_code == 200
