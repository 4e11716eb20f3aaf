"""``<service> --help`` tells an operator every environment variable, and starts nothing."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from email_channels.service import exit_with_help_if_asked
from sender.settings import SenderSettings

MODULES = {"fetcher": "fetcher", "router": "router", "sender": "sender", "config-api": "config_api"}


def test_help_lists_the_settings_with_their_variables(capsys):
    """Every own, Kafka and common setting appears under its environment variable."""
    with pytest.raises(SystemExit) as exited:
        exit_with_help_if_asked("sender", "Sends mail.", SenderSettings, ["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: sender\n\nSends mail.")
    for variable in (
        "SENDER_SMTP_TIMEOUT",
        "KAFKA_BOOTSTRAP_SERVERS",
        "EMAIL_CHANNELS_SECRET_KEYS",
    ):
        assert f"  {variable} " in text
    assert "KAFKA_SASL_PASSWORD (default: None)" in text
    assert "SENDER_PRODUCER_COMPRESSION (default: 'none')" in text  # an enum as it is written


def test_no_help_flag_returns_without_output(capsys):
    """Without -h/--help the service goes on starting."""
    exit_with_help_if_asked("sender", "Sends mail.", SenderSettings, ["--other"])
    assert capsys.readouterr().out == ""


async def test_every_service_entry_point_answers_help_without_kafka():
    """`python -m <service> --help` exits 0 with its usage, with no Kafka and no keyring."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "EMAIL_CHANNELS_"))}
    env["KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"

    async def help_of(module: str) -> tuple[int | None, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "--help",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode, out.decode()

    results = await asyncio.gather(*(help_of(module) for module in MODULES.values()))
    for name, (code, out) in zip(MODULES, results, strict=True):
        assert code == 0, (name, out)
        assert out.startswith(f"usage: {name}\n"), out
        assert "EMAIL_CHANNELS_HEALTH_PORT" in out
