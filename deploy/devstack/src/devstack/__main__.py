"""``python -m devstack run [--demo]``: the whole product on one machine.

Starts a local single-node Kafka (or uses ``KAFKA_BOOTSTRAP_SERVERS``), creates the topics,
starts the four services as child processes and prints the admin page's URL. ``--demo`` also
starts a local Dovecot and SMTP server, seeds a mailbox and creates a campaign and a channel
through config-api, so mail flows end to end. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer

from devstack.kafka import running_kafka
from devstack.mail import customer_mail
from devstack.processes import ServiceFailed, ServiceProcesses
from email_channels.admin import ensure_topics
from email_channels.logconfig import configure_logging
from email_channels.secretbox import SecretBox
from email_channels.settings import KafkaSettings
from email_channels.topics import Topic

log = structlog.get_logger("devstack")

DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a throwaway local demo mailbox
DEMO_EXCHANGE_MAILBOX = "exchange@demo.example"
DEMO_EXCHANGE_APP = {
    "tenant_id": "local-demo-tenant",
    "client_id": "00000000-0000-4000-8000-00000000d3m0",
    "client_secret": "local-demo-secret",  # a throwaway app of the local stand-in
}


def secret_keys(var: Path) -> str:
    """The keyring from the environment, or one generated once into ``var/secret-keys``."""
    if value := os.environ.get("EMAIL_CHANNELS_SECRET_KEYS"):
        return value
    path = var / "secret-keys"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"local:{SecretBox.generate_key()}\n", encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def admin_token() -> str:
    """config-api's operator token: ``CONFIG_API_ADMIN_TOKEN`` or a fresh one for this run."""
    return os.environ.get("CONFIG_API_ADMIN_TOKEN") or secrets.token_urlsafe(32)


def _post(url: str, body: dict[str, Any], *, token: str) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        result: dict[str, Any] = json.loads(response.read())
        return result


def run(*, demo: bool, port: int, kafka_port: int | None) -> int:
    var = Path(os.environ.get("EMAIL_CHANNELS_VAR_DIR", "var")).resolve()
    var.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    with stack:
        kafka_dir = None if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else var / "kafka"
        kafka = stack.enter_context(running_kafka(data_dir=kafka_dir, port=kafka_port))
        settings = KafkaSettings(bootstrap_servers=kafka.bootstrap_servers)
        asyncio.run(ensure_topics(settings))
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "EMAIL_CHANNELS_SECRET_KEYS": secret_keys(var),
            "EMAIL_CHANNELS_BLOB_STORE_URL": f"file://{var / 'blobs'}",
            "CONFIG_API_HOST": "127.0.0.1",
            "CONFIG_API_PORT": str(port),
            "CONFIG_API_ADMIN_TOKEN": admin_token(),
        }
        if demo:
            env.update(_start_demo_mail(stack, var))
        services = ServiceProcesses(env)
        stack.callback(services.stop)
        services.start()
        base = f"http://127.0.0.1:{port}"
        try:
            services.wait_http_ready(f"{base}/readyz")
        except ServiceFailed as exc:
            log.error("a service failed to start", error=str(exc))
            return 1
        if demo:
            campaign_id = _create_demo_channel(base, env)
            # The reference campaign service answers the demo's customer mail end to end.
            campaign = ServiceProcesses(
                {**env, "AUTOREPLY_CAMPAIGN_ID": campaign_id}, names=("campaign-autoreply",)
            )
            stack.callback(campaign.stop)
            campaign.start()
            services.children.update(campaign.children)
        _banner(
            base,
            kafka.bootstrap_servers,
            kafka.version,
            token=env["CONFIG_API_ADMIN_TOKEN"],
            demo=env if demo else None,
        )
        while not stopping.wait(1.0):
            try:
                services.check_alive()
            except ServiceFailed as exc:
                log.error("a service stopped", error=str(exc))
                return 1
        log.info("stopping")
    return 0


def _demo_message(to: str, number: int) -> bytes:
    return customer_mail(
        to,
        f"Demo message {number}: where is my order?",
        body=f"Hello, this is demo message number {number}.\n",
    )


def _start_demo_mail(stack: contextlib.ExitStack, var: Path) -> dict[str, str]:
    from devstack.certs import make_test_pki  # noqa: PLC0415 - only the demo needs mail servers
    from devstack.dovecot import Dovecot  # noqa: PLC0415
    from devstack.smtp import SmtpServer  # noqa: PLC0415

    pki = make_test_pki(var / "demo-pki")
    dovecot = stack.enter_context(Dovecot(pki=pki))
    dovecot.add_user(DEMO_USER, DEMO_PASSWORD)
    for number in range(1, 4):
        dovecot.deliver(DEMO_USER, _demo_message("support@demo.example", number))
    smtp = stack.enter_context(SmtpServer(pki, credentials=("demo", DEMO_PASSWORD)))
    graph = _start_demo_exchange(stack, pki)
    return {
        "EMAIL_CHANNELS_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "EMAIL_CHANNELS_CA_FILE": str(pki.ca_cert),
        "DEMO_IMAPS_PORT": str(dovecot.imaps_port),
        "DEMO_SMTP_PORT": str(smtp.port),
        "DEMO_GRAPH_AUTHORITY_HOST": graph.authority_host,
        "DEMO_GRAPH_URL": graph.graph_url,
    }


def _start_demo_exchange(stack: contextlib.ExitStack, pki: Any) -> Any:
    """The LOCAL stand-in of Microsoft's identity platform and Graph (not Microsoft): an app
    registration and a mailbox with two messages, for an Exchange Online demo channel."""
    from devstack.graph import AppRegistration, LocalGraph  # noqa: PLC0415

    graph = stack.enter_context(LocalGraph(pki))
    graph.register_app(
        AppRegistration(
            tenant_id=DEMO_EXCHANGE_APP["tenant_id"],
            client_id=DEMO_EXCHANGE_APP["client_id"],
            client_secret=DEMO_EXCHANGE_APP["client_secret"],
        )
    )
    graph.add_mailbox(DEMO_EXCHANGE_MAILBOX)
    for number in range(1, 3):
        graph.deliver(
            DEMO_EXCHANGE_MAILBOX,
            _demo_message(DEMO_EXCHANGE_MAILBOX, number),
        )
    return graph


def _create_demo_channel(base: str, env: dict[str, str]) -> str:
    """Create the demo campaign, its IMAP/SMTP channel and its Exchange channel (each validated
    once); return the campaign id."""
    token = env["CONFIG_API_ADMIN_TOKEN"]
    campaign = _post(f"{base}/api/v1/campaigns", {"name": "Support"}, token=token)
    channel = _post(
        f"{base}/api/v1/channels",
        {
            "name": "Demo support mailbox",
            "email_address": "support@demo.example",
            "default_campaign_id": campaign["id"],
            "enabled": True,
            "inbound": {
                "kind": "imap",
                "host": "127.0.0.1",
                "port": int(env["DEMO_IMAPS_PORT"]),
                "tls": "ssl",
                "username": DEMO_USER,
                "password": DEMO_PASSWORD,
            },
            "outbound": {
                "kind": "smtp",
                "host": "127.0.0.1",
                "port": int(env["DEMO_SMTP_PORT"]),
                "tls": "starttls",
                "username": DEMO_USER,
                "password": DEMO_PASSWORD,
            },
        },
        token=token,
    )
    # Validate once, so the list shows it Active from the start (as an administrator would).
    report = _post(f"{base}/api/v1/channels/{channel['id']}/validate", {}, token=token)
    log.info(
        "demo channel created",
        channel_id=channel["id"],
        campaign_id=campaign["id"],
        validated=report["ok"],
        failing_step=report["failing_step"],
    )
    exchange = {
        "kind": "graph",
        **DEMO_EXCHANGE_APP,
        "mailbox": DEMO_EXCHANGE_MAILBOX,
        "authority_host": env["DEMO_GRAPH_AUTHORITY_HOST"],
        "graph_url": env["DEMO_GRAPH_URL"],
    }
    channel = _post(
        f"{base}/api/v1/channels",
        {
            "name": "Demo Exchange Online mailbox (LOCAL stand-in, not Microsoft)",
            "email_address": DEMO_EXCHANGE_MAILBOX,
            "default_campaign_id": campaign["id"],
            "enabled": True,
            "inbound": exchange,
            "outbound": exchange,
        },
        token=token,
    )
    report = _post(f"{base}/api/v1/channels/{channel['id']}/validate", {}, token=token)
    log.info(
        "demo exchange channel created (local stand-in)",
        channel_id=channel["id"],
        validated=report["ok"],
        failing_step=report["failing_step"],
    )
    return str(campaign["id"])


def _banner(
    base: str, bootstrap: str, version: str, *, token: str, demo: dict[str, str] | None
) -> None:
    lines = [
        "",
        "Email Channels is running.",
        f"  admin page     {base}/",
        f"  admin token    {token}",
        "                 (CONFIG_API_ADMIN_TOKEN; send 'Authorization: Bearer <token>')",
        f"  API docs       {base}/docs",
        f"  Kafka          {bootstrap} (Apache Kafka {version})",
        "  services       config-api, router, fetcher, sender",
    ]
    if demo is not None:
        lines.append(
            f"  demo mail      IMAPS 127.0.0.1:{demo['DEMO_IMAPS_PORT']}, SMTP (STARTTLS) "
            f"127.0.0.1:{demo['DEMO_SMTP_PORT']}, user {DEMO_USER} / {DEMO_PASSWORD}"
        )
        lines.append("  demo           3 seeded mails flow from Dovecot to email.routed;")
        lines.append("                 see them: make tail TOPIC=email.routed")
        lines.append("                 the reference campaign service (campaign-autoreply)")
        lines.append("                 answers each one; its log shows 'answered' and the")
        lines.append("                 'delivery outcome' from the local SMTP server")
        lines.append("  demo exchange  2 mails from an Exchange Online channel served by a LOCAL")
        lines.append("                 stand-in of Microsoft Graph (devstack.graph), not Microsoft")
    lines += ["Press Ctrl-C to stop.", ""]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


async def tail(topic: str, *, follow: bool) -> None:
    """Print a topic's records (key, campaign header, JSON value), oldest first."""
    settings = KafkaSettings()
    name = settings.topics(Topic(topic)) if topic in {t.value for t in Topic} else topic
    consumer = AIOKafkaConsumer(
        name,
        **settings.client_kwargs(),
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",  # records of aborted transactions are not shown
    )
    await consumer.start()
    try:
        idle_rounds = 0
        while follow or idle_rounds < 2:  # noqa: PLR2004 - two empty polls: caught up
            batches = await consumer.getmany(timeout_ms=1000)
            idle_rounds = 0 if batches else idle_rounds + 1
            for records in batches.values():
                for record in records:
                    sys.stdout.write(_render(record) + "\n")
            sys.stdout.flush()
    finally:
        await consumer.stop()


def _render(record: Any) -> str:
    key = record.key.decode("utf-8", "replace") if record.key else None
    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
    try:
        value: Any = json.loads(record.value) if record.value is not None else None
    except ValueError:
        value = f"<{len(record.value)} bytes, not JSON>"
    if isinstance(value, dict) and isinstance(value.get("raw_mime"), str):
        value["raw_mime"] = f"<{len(value['raw_mime'])} base64 chars>"
    head = f"--- {record.topic}[{record.partition}]@{record.offset} key={key}"
    if "campaign-id" in headers:
        head += f" campaign-id={headers['campaign-id']}"
    return head + "\n" + json.dumps(value, indent=2, ensure_ascii=False)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="start Kafka, the four services and the admin page")
    run_parser.add_argument("--demo", action="store_true", help="also a seeded local mailbox")
    run_parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    run_parser.add_argument(
        "--kafka-port",
        type=int,
        default=int(os.environ.get("DEVSTACK_KAFKA_PORT", "9092")),
        help="port of the local broker (0: any free port)",
    )
    tail_parser = sub.add_parser("tail", help="print the records of a topic (KAFKA_* settings)")
    tail_parser.add_argument("topic", help="e.g. email.routed (the prefix is added)")
    tail_parser.add_argument("-f", "--follow", action="store_true", help="keep waiting")
    args = parser.parse_args()
    configure_logging(service="devstack", fmt="console")
    if args.command == "tail":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(tail(args.topic, follow=args.follow))
        return
    sys.exit(run(demo=args.demo, port=args.port, kafka_port=args.kafka_port or None))


if __name__ == "__main__":
    main()
