"""API bodies -> Kafka events -> API responses: secrets encrypted, kept, and never shown."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from config_api import mapping
from config_api.errors import InvalidInput
from config_api.schemas import ChannelIn, ChannelUpdate, ImapInboundIn, SmtpOutboundIn, StatusOut
from email_channels.events import (
    AfterFetch,
    ChannelConfig,
    ChannelState,
    ImapInbound,
    Pop3Inbound,
    SmtpOutbound,
    TlsMode,
)
from email_channels.secretbox import SecretBox

UNKNOWN = StatusOut(state=ChannelState.INACTIVE, reason="not validated yet")
IMAP_PASSWORD = "imap-Pa55 word"
SMTP_PASSWORD = "smtp-Pa55"


@pytest.fixture(scope="module")
def box() -> SecretBox:
    return SecretBox.from_env(f"k1:{SecretBox.generate_key()}")


def channel_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "  Support  ",
        "email_address": " support@example.com ",
        "default_campaign_id": "sales",
        "enabled": True,
        "inbound": {
            "host": " IMAP.Example.com ",
            "tls": "ssl",
            "username": " support@example.com ",
            "password": IMAP_PASSWORD,
            "folders": ["INBOX", " Support "],
        },
        "outbound": {
            "host": "smtp.example.com",
            "tls": "starttls",
            "username": "support",
            "password": SMTP_PASSWORD,
        },
    }
    body.update(changes)
    return body


def imap_of(config: ChannelConfig) -> ImapInbound:
    assert isinstance(config.inbound, ImapInbound)
    return config.inbound


def smtp_of(config: ChannelConfig) -> SmtpOutbound:
    assert isinstance(config.outbound, SmtpOutbound)
    return config.outbound


def test_create_encrypts_passwords_and_trims_typed_text(box: SecretBox) -> None:
    """Passwords reach the event encrypted (and decrypt back); names and hosts are trimmed."""
    config = mapping.channel_config(
        ChannelIn.model_validate(channel_body()), channel_id="c1", box=box
    )

    assert isinstance(config.inbound, ImapInbound)
    assert isinstance(config.outbound, SmtpOutbound)
    assert config.name == "Support"
    assert config.email_address == "support@example.com"
    assert config.inbound.host == "imap.example.com"
    assert config.inbound.username == "support@example.com"
    assert config.inbound.folders == ["INBOX", "Support"]
    assert config.revision == 1
    event_json = config.model_dump_json()
    assert IMAP_PASSWORD not in event_json
    assert SMTP_PASSWORD not in event_json
    assert box.decrypt(config.inbound.password) == IMAP_PASSWORD
    assert config.outbound.password is not None
    assert box.decrypt(config.outbound.password) == SMTP_PASSWORD


def test_default_ports_follow_the_tls_mode(box: SecretBox) -> None:
    """Without a port: IMAP 993 (ssl) / 143; SMTP 465 (ssl) / 587 (starttls) / 25 (plain)."""
    cases = [
        ("ssl", "ssl", 993, 465),
        ("starttls", "starttls", 143, 587),
        ("plain", "plain", 143, 25),
    ]
    for imap_tls, smtp_tls, imap_port, smtp_port in cases:
        body = channel_body()
        body["inbound"] = {**body["inbound"], "tls": imap_tls}
        body["outbound"] = {**body["outbound"], "tls": smtp_tls}
        config = mapping.channel_config(ChannelIn.model_validate(body), channel_id="c", box=box)
        assert (imap_of(config).port, smtp_of(config).port) == (imap_port, smtp_port)


def test_update_without_password_keeps_the_stored_one(box: SecretBox) -> None:
    """An omitted password keeps the stored ciphertext; a new one replaces it."""
    current = mapping.channel_config(
        ChannelIn.model_validate(channel_body()), channel_id="c1", box=box
    )
    body = channel_body(revision=1, name="Support EU")
    del body["inbound"]["password"]
    del body["outbound"]["password"]

    updated = mapping.channel_config(
        ChannelUpdate.model_validate(body), channel_id="c1", box=box, current=current
    )

    assert updated.revision == 2
    assert updated.name == "Support EU"
    assert imap_of(updated).password == imap_of(current).password
    assert smtp_of(updated).password == smtp_of(current).password

    body["inbound"]["password"] = "new-one"
    replaced = mapping.channel_config(
        ChannelUpdate.model_validate(body), channel_id="c1", box=box, current=updated
    )
    assert box.decrypt(imap_of(replaced).password) == "new-one"


@pytest.mark.parametrize(
    ("side", "change"),
    [
        ("inbound", {"port": 1993}),
        ("inbound", {"host": "imap.elsewhere.example"}),
        ("inbound", {"username": "someone-else"}),
        ("inbound", {"tls": "starttls", "port": 993}),
        ("outbound", {"port": 2525}),
        ("outbound", {"host": "smtp.elsewhere.example"}),
        ("outbound", {"username": "other@example.com"}),
        ("outbound", {"tls": "ssl", "port": 587}),
    ],
)
def test_login_change_needs_the_password_again(
    box: SecretBox, side: str, change: dict[str, Any]
) -> None:
    """Changing host, port, user or TLS mode without the password is a 422 naming the
    password field: the stored one was given for the old server, never send it to a new one."""
    current = mapping.channel_config(
        ChannelIn.model_validate(channel_body()), channel_id="c1", box=box
    )
    body = channel_body(revision=1)
    body["inbound"].pop("password")
    body["outbound"].pop("password")
    body[side] = {**body[side], **change}

    with pytest.raises(InvalidInput) as caught:
        mapping.channel_config(
            ChannelUpdate.model_validate(body), channel_id="c1", box=box, current=current
        )

    assert caught.value.problems[0].loc == ("body", side, "password")
    assert "required again" in caught.value.problems[0].message
    body[side]["password"] = "entered-again"
    updated = mapping.channel_config(
        ChannelUpdate.model_validate(body), channel_id="c1", box=box, current=current
    )
    assert updated.settings_changed_at is not None
    assert current.settings_changed_at is not None
    assert updated.settings_changed_at > current.settings_changed_at


def test_settings_changed_at_moves_only_with_server_settings(box: SecretBox) -> None:
    """Renaming or enabling keeps settings_changed_at (health reports stay valid)."""
    current = mapping.channel_config(
        ChannelIn.model_validate(channel_body()), channel_id="c1", box=box
    )
    body = channel_body(revision=1, name="Renamed")
    body["inbound"].pop("password")
    body["outbound"].pop("password")

    renamed = mapping.channel_config(
        ChannelUpdate.model_validate(body), channel_id="c1", box=box, current=current
    )

    assert renamed.settings_changed_at == current.settings_changed_at


def test_kept_password_moves_to_the_active_key() -> None:
    """After a key rotation, re-saving a channel re-encrypts the stored secret with the new key."""
    old_key, new_key = SecretBox.generate_key(), SecretBox.generate_key()
    old_box = SecretBox.from_env(f"old:{old_key}")
    rotated_box = SecretBox.from_env(f"new:{new_key},old:{old_key}")
    current = mapping.channel_config(
        ChannelIn.model_validate(channel_body()), channel_id="c1", box=old_box
    )
    body = channel_body(revision=1)
    del body["inbound"]["password"]

    updated = mapping.channel_config(
        ChannelUpdate.model_validate(body), channel_id="c1", box=rotated_box, current=current
    )

    assert imap_of(updated).password.kid == "new"
    assert rotated_box.decrypt(imap_of(updated).password) == IMAP_PASSWORD


def test_new_imap_settings_need_a_password(box: SecretBox) -> None:
    """Creating IMAP settings without a password names inbound.password."""
    body = channel_body()
    del body["inbound"]["password"]

    with pytest.raises(InvalidInput) as caught:
        mapping.channel_config(ChannelIn.model_validate(body), channel_id="c1", box=box)

    assert [p.loc for p in caught.value.problems] == [("body", "inbound", "password")]


def test_undecryptable_stored_password_asks_for_it_again(box: SecretBox) -> None:
    """A stored secret whose key left the keyring cannot be kept: the error says to resend it."""
    other = SecretBox.from_env(f"gone:{SecretBox.generate_key()}")
    current = mapping.channel_config(
        ChannelIn.model_validate(channel_body()), channel_id="c1", box=other
    )
    body = channel_body(revision=1)
    del body["inbound"]["password"]

    with pytest.raises(InvalidInput) as caught:
        mapping.channel_config(
            ChannelUpdate.model_validate(body), channel_id="c1", box=box, current=current
        )

    assert caught.value.problems[0].loc == ("body", "inbound", "password")
    assert "gone" in caught.value.problems[0].message


def test_response_shows_password_set_never_the_secret(box: SecretBox) -> None:
    """The response names whether a password is set, and holds no secret in any form."""
    config = mapping.channel_config(
        ChannelIn.model_validate(channel_body()), channel_id="c1", box=box
    )

    out = mapping.channel_out(config, campaign=None, filters=None, status=UNKNOWN)

    dumped = out.model_dump_json()
    assert out.inbound is not None
    assert out.outbound is not None
    assert out.inbound.password_set
    assert out.outbound.password_set
    assert IMAP_PASSWORD not in dumped
    assert SMTP_PASSWORD not in dumped
    assert "ciphertext" not in dumped
    assert imap_of(config).password.ciphertext not in dumped


def test_smtp_without_login_has_no_password(box: SecretBox) -> None:
    """Dropping the SMTP username drops the stored password with it (no orphan secret)."""
    current = mapping.channel_config(
        ChannelIn.model_validate(channel_body()), channel_id="c1", box=box
    )
    body = channel_body(revision=1, outbound={"host": "relay.example.com", "tls": "plain"})

    updated = mapping.channel_config(
        ChannelUpdate.model_validate(body), channel_id="c1", box=box, current=current
    )

    assert smtp_of(updated).username is None
    assert smtp_of(updated).password is None
    out = mapping.channel_out(updated, campaign=None, filters=None, status=UNKNOWN)
    assert out.outbound is not None
    assert not out.outbound.password_set


# --- request validation -------------------------------------------------------------------------


def locs(error: ValidationError) -> list[tuple[str | int, ...]]:
    return [tuple(e["loc"]) for e in error.errors()]


@pytest.mark.parametrize("password", [" leading", "trailing ", "line\nbreak", "\tTab"])
def test_secret_with_stray_whitespace_is_refused_not_trimmed(password: str) -> None:
    """A stray space in a secret is an error naming the field; the value is never echoed."""
    with pytest.raises(ValidationError) as caught:
        ImapInboundIn.model_validate(
            {"host": "imap.example.com", "username": "u", "password": password}
        )

    assert locs(caught.value) == [("password",)]
    assert password not in str(caught.value)
    assert "must not" in caught.value.errors()[0]["msg"]


@pytest.mark.parametrize(
    "host", ["imap example.com", "imaps://imap.example.com", "imap.example.com:993", "a/b", ""]
)
def test_host_must_be_a_bare_name_or_address(host: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SmtpOutboundIn.model_validate({"host": host})
    assert locs(caught.value) == [("host",)]


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "mail-1.example.co.uk", "localhost"])
def test_host_names_and_ip_literals_are_accepted_unresolved(host: str) -> None:
    """Host names are not resolved on save (the host policy applies at connect time)."""
    SmtpOutboundIn.model_validate({"host": host})


def test_username_with_line_break_is_refused() -> None:
    """CR/LF in a login would inject protocol commands."""
    with pytest.raises(ValidationError) as caught:
        ImapInboundIn.model_validate(
            {"host": "h.example", "username": "u\r\nA1 DELETE INBOX", "password": "p"}
        )
    assert locs(caught.value) == [("username",)]


def test_unknown_fields_are_refused_by_name() -> None:
    """A typo is a 422 naming it, not a silently ignored setting."""
    with pytest.raises(ValidationError) as caught:
        ChannelIn.model_validate({"name": "x", "pasword": "p"})
    assert locs(caught.value) == [("pasword",)]


def test_blank_optional_fields_mean_not_set() -> None:
    """HTML forms send empty strings for empty optional fields."""
    body = ChannelIn.model_validate({"name": "x", "email_address": " ", "default_campaign_id": ""})
    assert body.email_address is None
    assert body.default_campaign_id is None


def test_event_round_trip_keeps_the_mapping(box: SecretBox) -> None:
    """What the mapping produces is a valid contract event, byte-for-byte stable through JSON."""
    body = channel_body()
    body["inbound"] = {
        **body["inbound"],
        "after_fetch": "move",
        "move_to_folder": "Archive",
    }
    config = mapping.channel_config(ChannelIn.model_validate(body), channel_id="c1", box=box)

    again = ChannelConfig.model_validate_json(config.model_dump_json())

    assert again == config
    assert isinstance(again.inbound, ImapInbound)
    assert again.inbound.after_fetch is AfterFetch.MOVE
    assert again.inbound.tls is TlsMode.SSL


# --- properties ---------------------------------------------------------------------------------

_SECRET_CHARS = st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\0")
secrets_ = st.text(_SECRET_CHARS, min_size=1, max_size=64).filter(lambda s: s == s.strip())


@given(password=secrets_, smtp_password=secrets_)
@settings(max_examples=50, deadline=None)
def test_any_valid_password_round_trips_and_is_never_shown(
    password: str, smtp_password: str
) -> None:
    """Whatever the password, the event holds it only encrypted, the keyring gives it back,
    and the response holds no trace of it."""
    box = SecretBox.from_env(f"k1:{SecretBox.generate_key()}")
    body = channel_body()
    body["inbound"]["password"] = password
    body["outbound"]["password"] = smtp_password

    config = mapping.channel_config(ChannelIn.model_validate(body), channel_id="c1", box=box)
    out = mapping.channel_out(config, campaign=None, filters=None, status=UNKNOWN).model_dump()

    smtp_secret = smtp_of(config).password
    assert smtp_secret is not None
    assert box.decrypt(imap_of(config).password) == password
    assert box.decrypt(smtp_secret) == smtp_password
    assert out["inbound"]["password_set"] is True
    assert "password" not in out["inbound"]
    assert "password" not in out["outbound"]


def pop3_body(**changes: Any) -> dict[str, Any]:
    inbound = {
        "kind": "pop3",
        "host": "pop.example.com",
        "tls": "ssl",
        "username": "support",
        "password": IMAP_PASSWORD,
    }
    inbound.update(changes)
    return channel_body(inbound=inbound)


def test_pop3_settings_map_to_the_pop3_event_with_its_default_port(box: SecretBox) -> None:
    """A POP3 body becomes a Pop3Inbound (port 995 with ssl, 110 otherwise, delete by default),
    encrypted, and comes back in the response as POP3 with only "password set"."""
    config = mapping.channel_config(ChannelIn.model_validate(pop3_body()), channel_id="c1", box=box)
    assert isinstance(config.inbound, Pop3Inbound)
    assert config.inbound.port == 995
    assert config.inbound.after_fetch is AfterFetch.DELETE
    assert box.decrypt(config.inbound.password) == IMAP_PASSWORD
    plain = mapping.channel_config(
        ChannelIn.model_validate(pop3_body(tls="starttls", after_fetch="mark_seen")),
        channel_id="c1",
        box=box,
    )
    assert isinstance(plain.inbound, Pop3Inbound)
    assert plain.inbound.port == 110
    assert plain.inbound.after_fetch is AfterFetch.MARK_SEEN

    out = mapping.channel_out(config, campaign=None, filters=None, status=UNKNOWN)
    assert out.inbound is not None
    assert out.inbound.kind == "pop3"
    assert out.inbound.password_set
    assert IMAP_PASSWORD not in out.model_dump_json()


def test_pop3_refuses_folder_actions_and_needs_its_password(box: SecretBox) -> None:
    """POP3 has no folders: `move` is refused by name; new POP3 settings need a password, and a
    changed port needs it again."""
    with pytest.raises(ValidationError) as refused:
        ChannelIn.model_validate(pop3_body(after_fetch="move"))
    assert "after_fetch" in str(refused.value)

    body = pop3_body()
    del body["inbound"]["password"]
    with pytest.raises(InvalidInput) as caught:
        mapping.channel_config(ChannelIn.model_validate(body), channel_id="c1", box=box)
    assert [p.loc for p in caught.value.problems] == [("body", "inbound", "password")]

    current = mapping.channel_config(
        ChannelIn.model_validate(pop3_body()), channel_id="c1", box=box
    )
    moved = pop3_body(port=1995)
    del moved["inbound"]["password"]
    with pytest.raises(InvalidInput) as again:
        mapping.channel_config(
            ChannelUpdate.model_validate({**moved, "revision": 1}),
            channel_id="c1",
            box=box,
            current=current,
        )
    assert "port changed" in again.value.problems[0].message
