"""Log redaction: secrets never reach a rendered log line."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from email_channels.redaction import REDACTED, is_secret_key, redact, redact_secrets
from email_channels.secretbox import EncryptedSecret, SecretBox

BOX = SecretBox.from_env(f"k7:{SecretBox.generate_key()}")


def render(**event: Any) -> dict[str, Any]:
    """Log through structlog with the processor and the JSON renderer, as production does."""
    logger = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[redact_secrets, structlog.processors.JSONRenderer()],
    )
    line: str = logger.info("test", **event)
    return json.loads(line)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWORD",
        "smtp_password",
        "sasl-plain-password",
        "passwd",
        "client_secret",
        "clientSecret",
        "refresh_token",
        "access_token",
        "Authorization",
        "api_key",
        "X-Api-Key",
        "secret_key",
        "aws_secret_access_key",
        "private_key",
        "secret_keys",
        "credentials",
        "Set-Cookie",
        "auth",
    ],
)
def test_secret_looking_keys_are_recognised(key: str):
    """Names that hold secrets, in any case or separator style, are masked."""
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "event",
        "key",
        "channel_id",
        "username",
        "token_url",
        "token_endpoint",
        "token_type",
        "secret_kid",
        "expires_in",
        "message_id",
        "subject",
    ],
)
def test_descriptive_keys_are_kept(key: str):
    """Names that describe a secret (or are just ordinary, like Kafka's `key`) are not masked."""
    assert not is_secret_key(key)


def test_nested_secrets_are_masked_at_any_depth():
    """Secrets inside dicts inside lists inside dicts are masked; everything else is kept."""
    line = render(
        channel_id="c1",
        inbound={
            "host": "imap.example.com",
            "username": "bob",
            "password": "hunter2",
            "oauth": [{"refresh_token": "rt-123", "token_url": "https://login/token"}],
        },
    )
    assert line["channel_id"] == "c1"
    assert line["inbound"] == {
        "host": "imap.example.com",
        "username": "bob",
        "password": REDACTED,
        "oauth": [{"refresh_token": REDACTED, "token_url": "https://login/token"}],
    }
    assert "hunter2" not in json.dumps(line)
    assert "rt-123" not in json.dumps(line)


def test_secret_str_is_masked_under_any_key():
    """A pydantic SecretStr is masked wherever it appears, whatever its key."""
    line = render(value=SecretStr("s3cr3t"), items=[SecretStr("s3cr3t")])
    assert line["value"] == REDACTED
    assert line["items"] == [REDACTED]


def test_whole_secret_value_is_masked_even_if_structured():
    """A secret-named key hides its whole value, dict or list included."""
    line = render(credentials={"user": "bob", "pw": "hunter2"})
    assert line["credentials"] == REDACTED


def test_none_and_booleans_stay_visible():
    """Whether a secret is set is useful and harmless: None and booleans are not masked."""
    line = render(password=None, client_secret=True)
    assert line["password"] is None
    assert line["client_secret"] is True


def test_password_in_url_is_masked():
    """user:password@ in any URL inside any string is masked, the rest of the URL kept."""
    line = render(
        event_url="imap://bob:hunter2@mail.example.com:993/INBOX",
        msg="connecting to smtp://alice:p%40ss@smtp.example.com and http://plain.example.com",
    )
    assert line["event_url"] == f"imap://bob:{REDACTED}@mail.example.com:993/INBOX"
    assert line["msg"] == (
        f"connecting to smtp://alice:{REDACTED}@smtp.example.com and http://plain.example.com"
    )


def test_models_are_logged_as_their_repr_fields_with_secrets_masked():
    """A pydantic model is logged as its fields; SecretStr and EncryptedSecret reveal nothing."""

    class Settings(BaseModel):
        host: str
        sasl_password: SecretStr
        stored: EncryptedSecret

    secret = BOX.encrypt("hunter2")
    line = render(
        settings=Settings(host="kafka:9092", sasl_password=SecretStr("pw"), stored=secret)
    )
    assert line["settings"] == {
        "host": "kafka:9092",
        "sasl_password": REDACTED,
        "stored": {"kid": "k7"},
    }
    assert secret.ciphertext not in json.dumps(line)


def test_callers_objects_are_not_modified():
    """Redaction copies what it changes: the application's own dicts keep their values."""
    config = {"password": "hunter2", "nested": {"token": "t"}}
    redacted = redact({"config": config})
    assert redacted == {"config": {"password": REDACTED, "nested": {"token": REDACTED}}}
    assert config == {"password": "hunter2", "nested": {"token": "t"}}


def test_tuples_and_sets_keep_their_type():
    """Containers are rebuilt with their own type."""
    assert redact((SecretStr("a"), "b")) == (REDACTED, "b")
    assert redact({SecretStr("a"), "b"}) == {REDACTED, "b"}
    assert redact(frozenset({"b"})) == frozenset({"b"})


def test_self_referencing_structures_terminate():
    """A cyclic structure does not crash logging; what is too deep is masked."""
    loop: dict[str, Any] = {"name": "x"}
    loop["self"] = loop
    result = redact(loop)
    assert result["name"] == "x"


@given(
    secret=st.text(min_size=1, alphabet=st.characters(categories=["L", "N"])).map(
        lambda text: f"zq9-{text}"  # a marker no key or value of the line can contain
    ),
    path=st.lists(st.sampled_from(["a", "b", "channel", "inbound"]), max_size=6),
)
def test_a_secret_at_any_path_never_renders(secret: str, path: list[str]):
    """However deep a password sits in nested dicts and lists, its value is not in the line."""
    value: Any = {"password": secret, "host": "h"}
    for step in reversed(path):
        value = {step: [value]}
    assert secret not in json.dumps(render(payload=value))
