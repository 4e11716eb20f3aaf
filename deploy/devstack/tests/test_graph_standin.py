"""The local identity/Graph stand-in itself: documented answer shapes and the refusals the
product relies on (so a test passing against it means something)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import jwt  # config-api's dependency: what verifies these tokens in production
import pytest

from devstack.graph import AppRegistration, LocalGraph, read_form_post
from email_channels.tls import client_context

SHAPES = json.loads((Path(__file__).parents[1] / "src/devstack/data/graph/shapes.json").read_text())
MAILBOX = "user@contoso.test"
REDIRECT = "https://app.example.test/oauth/callback"


def has_shape(body: dict[str, Any], name: str) -> bool:
    missing = [key for key in SHAPES[name] if key not in body]
    assert not missing, f"{name}: missing {missing} in {sorted(body)}"
    return True


@pytest.fixture
def app(local_graph: LocalGraph) -> AppRegistration:
    local_graph.add_mailbox(MAILBOX)
    return local_graph.register_app(
        AppRegistration("tenant-1", "client-1", "secret-1", redirect_uris=(REDIRECT,), user=MAILBOX)
    )


@pytest.fixture
async def http(pki) -> Any:
    async with httpx.AsyncClient(verify=client_context(extra_ca_file=pki.ca_cert)) as client:
        yield client


async def app_token(http: httpx.AsyncClient, graph: LocalGraph, **form: str) -> httpx.Response:
    data = {
        "grant_type": "client_credentials",
        "client_id": "client-1",
        "client_secret": "secret-1",
        "scope": "https://graph.microsoft.com/.default",
        **form,
    }
    return await http.post(f"{graph.base_url}/tenant-1/oauth2/v2.0/token", data=data)


async def test_identity_answers_have_the_documented_shapes_and_refusals(local_graph, app, http):
    """OIDC discovery, client-credentials and auth-code answers carry Microsoft's keys; a wrong
    secret, an unknown tenant and a PKCE verifier that does not match are refused with AADSTS."""
    discovery = await http.get(
        f"{local_graph.base_url}/tenant-1/v2.0/.well-known/openid-configuration"
    )
    assert has_shape(discovery.json(), "openid_configuration")
    assert has_shape((await app_token(http, local_graph)).json(), "token_client_credentials")

    wrong = await app_token(http, local_graph, client_secret="nope")
    assert wrong.status_code == 401
    assert has_shape(wrong.json(), "oauth_error")
    assert wrong.json()["error_codes"] == [7000215]
    unknown = await http.get(f"{local_graph.base_url}/other/v2.0/.well-known/openid-configuration")
    assert unknown.json()["error_codes"] == [90002]

    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    page = await http.get(
        f"{local_graph.base_url}/tenant-1/oauth2/v2.0/authorize",
        params={
            "client_id": "client-1",
            "response_type": "code",
            "redirect_uri": REDIRECT,
            "scope": "offline_access Mail.Send",
            "state": "s1",
            "code_challenge": challenge.decode(),
            "code_challenge_method": "S256",
            "response_mode": "form_post",
        },
    )
    action, answer = read_form_post(page.text)
    assert (action, answer["state"]) == (REDIRECT, "s1")
    redeem = {
        "grant_type": "authorization_code",
        "code": answer["code"],
        "redirect_uri": REDIRECT,
        "code_verifier": "w" * 50,
    }
    refused = await app_token(http, local_graph, **redeem)
    assert refused.json()["error_codes"] == [501481]  # verifier does not match the challenge
    granted = await app_token(http, local_graph, **{**redeem, "code_verifier": verifier})
    assert has_shape(granted.json(), "token_authorization_code")
    again = await app_token(http, local_graph, **{**redeem, "code_verifier": verifier})
    assert again.json()["error_codes"] == [54005]  # a code is redeemed once


async def test_graph_answers_have_the_documented_shapes_and_limits(local_graph, app, http):
    """Folders, delta pages (next then delta link, @removed), upload sessions and Graph errors
    carry Microsoft's keys; a bearer token on the upload URL, a wrong range and a sendMail over
    4 MB are refused."""
    token = (await app_token(http, local_graph)).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    user = f"{local_graph.graph_url}/users/{MAILBOX}"
    ids = [local_graph.deliver(MAILBOX, f"Subject: {n}\r\n\r\n.\r\n".encode()) for n in range(3)]

    inbox = (await http.get(f"{user}/mailFolders/inbox", headers=auth)).json()
    assert has_shape(inbox, "mail_folder")
    first = await http.get(
        f"{user}/mailFolders/inbox/messages/delta",
        headers={**auth, "Prefer": "odata.maxpagesize=2"},
    )
    assert has_shape(first.json(), "delta_page_more")
    assert has_shape(first.json()["value"][0], "message")
    last = (await http.get(first.json()["@odata.nextLink"], headers=auth)).json()
    assert has_shape(last, "delta_page_last")
    local_graph.remove(MAILBOX, ids[0])
    changes = (await http.get(last["@odata.deltaLink"], headers=auth)).json()
    assert has_shape(changes["value"][0], "removed_message")

    missing = await http.get(f"{user}/messages/{ids[0]}/$value", headers=auth)
    assert missing.status_code == 404
    assert has_shape(missing.json(), "graph_error")
    assert has_shape(missing.json()["error"], "graph_error_body")

    draft = (
        await http.post(
            f"{user}/messages",
            content=base64.b64encode(b"Subject: big\r\n\r\n.\r\n"),
            headers={**auth, "Content-Type": "text/plain"},
        )
    ).json()
    session = (
        await http.post(
            f"{user}/messages/{draft['id']}/attachments/createUploadSession",
            json={"AttachmentItem": {"attachmentType": "file", "name": "a.bin", "size": 10}},
            headers=auth,
        )
    ).json()
    assert has_shape(session, "upload_session")
    url = session["uploadUrl"]
    with_token = await http.put(
        url, content=b"01234", headers={**auth, "Content-Range": "bytes 0-4/10"}
    )
    assert with_token.status_code == 401
    part = await http.put(url, content=b"01234", headers={"Content-Range": "bytes 0-4/10"})
    assert has_shape(part.json(), "upload_progress")
    gap = await http.put(url, content=b"9", headers={"Content-Range": "bytes 9-9/10"})
    assert gap.status_code == 416
    done = await http.put(url, content=b"56789", headers={"Content-Range": "bytes 5-9/10"})
    assert done.status_code == 201
    assert "attachments(" in done.headers["Location"]

    too_big = await http.post(
        f"{user}/sendMail",
        content=base64.b64encode(b"x" * (3 * 1024 * 1024 + 1)),
        headers={**auth, "Content-Type": "text/plain"},
    )
    assert too_big.status_code == 413
    assert local_graph.sent == []


async def test_browser_client_signs_in_with_pkce_and_gets_a_verifiable_api_token(local_graph, http):
    """A public client (no secret): the sign-in form takes a directory user, the code is
    redeemed only with the right PKCE verifier, the token endpoint answers the app's origin
    with CORS (and not another origin), and the API access token verifies against the JWKS
    with the user's app roles, the API audience and the v2 issuer."""

    page_origin = "http://127.0.0.1:8080"
    local_graph.register_app(
        AppRegistration(
            "tenant-2",
            "page-client",
            "",
            redirect_uris=(f"{page_origin}/",),
            public_client=True,
            api_audience="api://email-channels",
        )
    )
    local_graph.add_user("ada@contoso.test", roles=("admin",))
    verifier = "v" * 64
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    authorize = f"{local_graph.base_url}/tenant-2/oauth2/v2.0/authorize"
    query = {
        "client_id": "page-client",
        "response_type": "code",
        "redirect_uri": f"{page_origin}/",
        "scope": "openid api://email-channels/access_as_user",
        "state": "s-1",
        "nonce": "n-1",
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    form = await http.get(authorize, params=query)
    assert form.status_code == 200
    assert 'name="login"' in form.text
    unknown = await http.post(authorize, params=query, data={"login": "eve@contoso.test"})
    assert "is not a user of this directory" in unknown.text
    signed_in = await http.post(authorize, params=query, data={"login": "ada@contoso.test"})
    assert signed_in.status_code == 303
    answer = dict(httpx.URL(signed_in.headers["Location"]).params)
    assert answer["state"] == "s-1"

    token_url = f"{local_graph.base_url}/tenant-2/oauth2/v2.0/token"
    redeem = {
        "grant_type": "authorization_code",
        "client_id": "page-client",
        "code": answer["code"],
        "redirect_uri": f"{page_origin}/",
    }
    wrong = await http.post(
        token_url, data={**redeem, "code_verifier": "w" * 64}, headers={"Origin": page_origin}
    )
    assert wrong.status_code == 400
    assert wrong.json()["error_codes"] == [501481]
    assert wrong.headers["Access-Control-Allow-Origin"] == page_origin

    tokens = await http.post(
        token_url, data={**redeem, "code_verifier": verifier}, headers={"Origin": page_origin}
    )
    assert tokens.status_code == 200, tokens.text
    assert tokens.headers["Access-Control-Allow-Origin"] == page_origin
    other = await http.get(
        f"{local_graph.base_url}/tenant-2/v2.0/.well-known/openid-configuration",
        headers={"Origin": "http://evil.example.test"},
    )
    assert "Access-Control-Allow-Origin" not in other.headers

    keys = (await http.get(f"{local_graph.base_url}/tenant-2/discovery/v2.0/keys")).json()
    key = jwt.PyJWK(keys["keys"][0]).key
    claims = jwt.decode(
        tokens.json()["access_token"],
        key,
        algorithms=["RS256"],
        audience="api://email-channels",
        issuer=f"{local_graph.base_url}/tenant-2/v2.0",
    )
    assert claims["roles"] == ["admin"]
    assert claims["preferred_username"] == "ada@contoso.test"
    identity = jwt.decode(
        tokens.json()["id_token"], key, algorithms=["RS256"], audience="page-client"
    )
    assert identity["nonce"] == "n-1"
