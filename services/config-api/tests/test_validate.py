"""Validate against a real Dovecot and a real SMTP server: every step reported, each failure
named by its step, the whole run bounded, the outcome recorded so the channel turns Active."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, Any

import pytest
import structlog.testing

from devstack.ports import free_port
from email_channels.settings import CommonSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from contextlib import AbstractAsyncContextManager

    import httpx

    from config_api.settings import ConfigApiSettings
    from devstack.certs import TestPki
    from devstack.dovecot import Dovecot
    from devstack.pytest_plugin import MailUser
    from devstack.smtp import SmtpServer
    from email_channels.settings import KafkaSettings

    RunApi = Callable[[ConfigApiSettings], AbstractAsyncContextManager[httpx.AsyncClient]]
    ReadTopic = Callable[[KafkaSettings, str], Awaitable[list[tuple[str, bytes | None]]]]

pytestmark = pytest.mark.integration

BOUND_S = 20.0
"""Generous for the shared test machine (Dovecot delays a failed login by 2 s on purpose)."""
BLACKHOLE_BOUND_S = 3.0


def with_mail(
    settings: ConfigApiSettings, pki: TestPki | None, bound_s: float = BOUND_S
) -> ConfigApiSettings:
    """The test's settings, allowed to reach loopback mail servers, trusting the test CA."""
    common = CommonSettings(
        secret_keys=settings.common.secret_keys,
        allowed_hosts="127.0.0.1",
        ca_file=pki.ca_cert if pki else None,
    )
    return settings.model_copy(update={"common": common, "validate_timeout_s": bound_s})


@pytest.fixture
async def api(
    api_settings: ConfigApiSettings, pki: TestPki, run_api: RunApi
) -> AsyncIterator[httpx.AsyncClient]:
    async with run_api(with_mail(api_settings, pki)) as client:
        yield client


def imap(dovecot: Dovecot, user: MailUser, **changes: Any) -> dict[str, Any]:
    return {
        "host": dovecot.host,
        "port": dovecot.imaps_port,
        "tls": "ssl",
        "username": user.user,
        "password": user.password,
        "folders": ["INBOX"],
        **changes,
    }


def smtp(server: SmtpServer, **changes: Any) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.port,
        "tls": "starttls",
        "username": server.credentials[0],
        "password": server.credentials[1],
        **changes,
    }


async def test_working_channel_validates_and_turns_active(
    api: httpx.AsyncClient, dovecot: Dovecot, mail_user: MailUser, smtp_server: SmtpServer
) -> None:
    """Every step passes for both directions; the outcome is recorded and the channel, Inactive
    ('not validated yet') before, is Active after; nothing was sent."""
    dovecot.create_folder(mail_user.user, "Done")
    campaign = (await api.post("/api/v1/campaigns", json={"name": "Support"})).json()["id"]
    created = await api.post(
        "/api/v1/channels",
        json={
            "name": "Validated",
            "email_address": mail_user.address,
            "default_campaign_id": campaign,
            "enabled": True,
            "inbound": imap(dovecot, mail_user, after_fetch="move", move_to_folder="Done"),
            "outbound": smtp(smtp_server),
        },
    )
    channel_id = created.json()["id"]

    report = await api.post(f"/api/v1/channels/{channel_id}/validate")
    after = await api.get(f"/api/v1/channels/{channel_id}")
    active = await api.get("/api/v1/channels", params={"status": "active"})

    assert created.json()["status"]["state"] == "inactive"
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["ok"] is True, body
    assert body["recorded"] is True
    assert [s["name"] for s in body["inbound"]["steps"]] == [
        "dns",
        "login",
        "folder:INBOX",
        "folder:Done",
    ]
    assert [s["name"] for s in body["outbound"]["steps"]] == [
        "dns",
        "password",
        "tcp",
        "tls",
        "auth",
        "mail_from",
    ]
    assert all(s["elapsed_ms"] >= 0 for s in body["outbound"]["steps"])
    assert after.json()["status"]["state"] == "active"
    assert [c["id"] for c in active.json()["items"]] == [channel_id]
    assert not [m for m in smtp_server.messages if m.mail_from == mail_user.address]


FAILURES = {
    # case: (direction, expected failing step)
    "bad-dns-name": ("inbound", "dns"),
    "host-policy": ("inbound", "dns"),
    "closed-port": ("inbound", "tcp"),
    "wrong-password": ("inbound", "auth"),
    "missing-folder": ("inbound", "folder:Nope"),
    "smtp-auth-refused": ("outbound", "auth"),
    "smtp-closed-port": ("outbound", "tcp"),
}


async def test_each_failure_names_its_step(
    api: httpx.AsyncClient, dovecot: Dovecot, mail_user: MailUser, smtp_server: SmtpServer
) -> None:
    """Unsaved settings that fail at one step (bad DNS name, host refused by the policy, closed
    port, wrong password, missing folder, SMTP AUTH refused): each report names that step with
    a message, and never shows the password tried."""
    inbound = {
        "bad-dns-name": imap(dovecot, mail_user, host="no-such-host.invalid"),
        "host-policy": imap(dovecot, mail_user, host="10.1.2.3"),
        "closed-port": imap(dovecot, mail_user, port=free_port()),
        "wrong-password": imap(dovecot, mail_user, password="not-the-password"),
        "missing-folder": imap(dovecot, mail_user, folders=["INBOX", "Nope"]),
    }
    outbound = {
        "smtp-auth-refused": smtp(smtp_server, password="wrong-secret"),
        "smtp-closed-port": smtp(smtp_server, port=free_port()),
    }

    async def attempt(case: str) -> tuple[str, httpx.Response]:
        body = {"inbound": inbound.get(case), "outbound": outbound.get(case)}
        return case, await api.post("/api/v1/channels/validate", json=body)

    results = await asyncio.gather(*(attempt(case) for case in FAILURES))

    for case, response in results:
        direction, step = FAILURES[case]
        body = response.json()
        assert response.status_code == 200, (case, response.text)
        assert (case, body["failing_step"]) == (case, f"{direction}.{step}"), body
        assert body[direction]["message"], case
        assert body["recorded"] is False
        assert "not-the-password" not in response.text
        assert "wrong-secret" not in response.text


async def test_untrusted_certificate_fails_at_tls(
    api_settings: ConfigApiSettings,
    run_api: RunApi,
    dovecot: Dovecot,
    mail_user: MailUser,
    smtp_server: SmtpServer,
) -> None:
    """Without the test CA the servers' certificates are not trusted: both fail at tls."""
    async with run_api(with_mail(api_settings, None)) as api:
        response = await api.post(
            "/api/v1/channels/validate",
            json={"inbound": imap(dovecot, mail_user), "outbound": smtp(smtp_server)},
        )

    body = response.json()
    assert body["inbound"]["failing_step"] == "tls"
    assert body["outbound"]["failing_step"] == "tls"
    assert "not trusted" in body["inbound"]["message"]


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


async def test_blackholed_server_ends_within_the_bound(
    api_settings: ConfigApiSettings,
    pki: TestPki,
    run_api: RunApi,
    dovecot: Dovecot,
    mail_user: MailUser,
    blackhole: int,
) -> None:
    """A server that never answers: the validation ends at the bound (3 s here, 60 s by
    default) naming the step that waited, for both directions at once."""
    async with run_api(with_mail(api_settings, pki, BLACKHOLE_BOUND_S)) as api:
        started = time.perf_counter()
        response = await api.post(
            "/api/v1/channels/validate",
            json={
                "inbound": imap(dovecot, mail_user, port=blackhole),
                "outbound": {"host": "127.0.0.1", "port": blackhole, "tls": "plain"},
            },
        )
        elapsed = time.perf_counter() - started

    body = response.json()
    assert BLACKHOLE_BOUND_S <= elapsed < BLACKHOLE_BOUND_S + 5
    assert body["inbound"]["failing_step"] == "login"
    assert body["outbound"]["failing_step"] == "tcp"
    assert "no answer within" in body["inbound"]["message"]


async def test_saved_password_is_reused_only_for_the_same_server(
    api: httpx.AsyncClient, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """Validating edits of a saved channel may omit the password; moving the port may not."""
    created = await api.post(
        "/api/v1/channels", json={"name": "Edit", "inbound": imap(dovecot, mail_user)}
    )
    channel_id = created.json()["id"]
    edited = imap(dovecot, mail_user)
    edited.pop("password")

    same = await api.post(
        "/api/v1/channels/validate", json={"channel_id": channel_id, "inbound": edited}
    )
    moved = await api.post(
        "/api/v1/channels/validate",
        json={"channel_id": channel_id, "inbound": {**edited, "port": dovecot.imap_port}},
    )

    assert same.json()["ok"] is True, same.text
    assert moved.status_code == 422
    assert moved.json()["detail"][0]["field"] == "inbound.password"


CANARY = "canary-Pw-7f3a9c2e-do-not-leak"


async def test_canary_password_never_leaves_the_secret_box(
    api: httpx.AsyncClient,
    api_settings: ConfigApiSettings,
    dovecot: Dovecot,
    mail_user: MailUser,
    smtp_server: SmtpServer,
    read_topic: ReadTopic,
) -> None:
    """A password used for create, update, both validates and a failed login never appears in
    an API response, in any config topic's bytes, or in any log event (structlog, all levels)."""
    responses: list[httpx.Response] = []
    with structlog.testing.capture_logs() as events:
        created = await api.post(
            "/api/v1/channels",
            json={
                "name": "Canary",
                "inbound": imap(dovecot, mail_user, password=CANARY),
                "outbound": smtp(smtp_server, password=CANARY),
            },
        )
        channel_id = created.json()["id"]
        responses.append(created)
        responses.append(await api.get(f"/api/v1/channels/{channel_id}"))
        responses.append(await api.get("/api/v1/channels"))
        responses.append(await api.post(f"/api/v1/channels/{channel_id}/validate"))
        responses.append(
            await api.post(
                "/api/v1/channels/validate",
                json={"inbound": imap(dovecot, mail_user, password=CANARY)},
            )
        )
        bad = imap(dovecot, mail_user, password=CANARY)
        bad["password"] = f" {CANARY}"
        responses.append(await api.post("/api/v1/channels", json={"name": "x", "inbound": bad}))
    kafka = api_settings.kafka
    topics = [kafka.topics.channels, kafka.topics.channel_status, kafka.topics.filters]
    records = [record for topic in topics for record in await read_topic(kafka, topic)]

    assert responses[3].json()["failing_step"] == "inbound.auth"  # the login really failed
    assert responses[-1].status_code == 422
    assert all(CANARY not in response.text for response in responses)
    assert records
    assert all(CANARY.encode() not in (value or b"") for _, value in records)
    assert events
    assert CANARY not in repr(events)


async def test_pop3_settings_validate_through_the_api(
    api: httpx.AsyncClient, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """A POP3 inbound (Dovecot's POP3S) validates with the fetcher's POP3 code: logged in and
    the maildrop listed; a wrong password fails at auth, naming the step."""
    pop3 = {
        "kind": "pop3",
        "host": dovecot.host,
        "port": dovecot.pop3s_port,
        "tls": "ssl",
        "username": mail_user.user,
        "password": mail_user.password,
    }
    good = await api.post("/api/v1/channels/validate", json={"inbound": pop3})
    bad = await api.post(
        "/api/v1/channels/validate", json={"inbound": {**pop3, "password": "not-the-password"}}
    )

    assert good.status_code == 200, good.text
    assert good.json()["ok"] is True, good.json()
    assert bad.json()["ok"] is False
    assert bad.json()["failing_step"] == "inbound.auth", bad.json()
    assert "not-the-password" not in bad.text
