"""The secret box: secrets are encrypted before they reach Kafka and never shown afterwards."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from email_channels.errors import PermanentError
from email_channels.secretbox import (
    EncryptedSecret,
    SecretBox,
    SecretDecryptError,
)

# Fixed keys (not generate_key()): test ids must be the same in every collecting process.
KEY_1 = base64.urlsafe_b64encode(bytes(range(32))).decode()
KEY_2 = base64.urlsafe_b64encode(bytes(range(32, 64))).decode()
PLAINTEXT = "correct horse battery staple"

OLD_BOX = SecretBox.from_env(f"k1:{KEY_1}")
ROTATED_BOX = SecretBox.from_env(f"k2:{KEY_2},k1:{KEY_1}")
NEW_ONLY_BOX = SecretBox.from_env(f"k2:{KEY_2}")


class ChannelSettings(BaseModel):
    """Stands in for an event model with a secret field."""

    username: str
    password: EncryptedSecret


def _with_payload(secret: EncryptedSecret, payload: bytes) -> EncryptedSecret:
    head = secret.ciphertext.rsplit(":", 1)[0]
    encoded = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    return EncryptedSecret(ciphertext=f"{head}:{encoded}")


def _payload(secret: EncryptedSecret) -> bytes:
    encoded = secret.ciphertext.rsplit(":", 1)[1]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


# --- round trip and format -------------------------------------------------------------------


@given(plaintext=st.text())
def test_decrypt_inverts_encrypt_for_any_text(plaintext: str):
    """decrypt(encrypt(x)) == x for every text, including empty and non-ASCII."""
    assert ROTATED_BOX.decrypt(ROTATED_BOX.encrypt(plaintext)) == plaintext


@given(plaintext=st.text())
def test_round_trip_through_json(plaintext: str):
    """A secret inside an event model survives JSON serialisation and still decrypts."""
    model = ChannelSettings(username="bob", password=OLD_BOX.encrypt(plaintext))
    decoded = ChannelSettings.model_validate_json(model.model_dump_json())
    assert OLD_BOX.decrypt(decoded.password) == plaintext


def test_ciphertext_format_is_version_kid_base64url():
    """Ciphertext is v1:<active kid>:<base64url>, with no plaintext in it."""
    secret = ROTATED_BOX.encrypt(PLAINTEXT)
    assert re.fullmatch(r"v1:k2:[A-Za-z0-9_-]+", secret.ciphertext)
    assert PLAINTEXT not in secret.ciphertext
    assert (secret.version, secret.kid) == ("v1", "k2")
    assert len(_payload(secret)) == 12 + len(PLAINTEXT.encode()) + 16  # nonce + ct + tag


def test_same_plaintext_encrypts_differently_each_time():
    """A fresh nonce per encryption: equal passwords are not recognisable as equal."""
    assert OLD_BOX.encrypt(PLAINTEXT) != OLD_BOX.encrypt(PLAINTEXT)


def test_lone_surrogate_is_refused_without_echoing_it():
    """Text that is not valid Unicode cannot be encrypted; the error does not quote it."""
    with pytest.raises(ValueError, match="UTF-8") as caught:
        OLD_BOX.encrypt("pw\udc80")
    assert "pw" not in str(caught.value)


# --- nothing is revealed ---------------------------------------------------------------------


def test_repr_and_str_show_only_the_key_id():
    """repr/str of a secret, and of a model holding one, show EncryptedSecret(kid=...) only."""
    secret = OLD_BOX.encrypt(PLAINTEXT)
    payload = secret.ciphertext.rsplit(":", 1)[1]
    assert repr(secret) == str(secret) == "EncryptedSecret(kid='k1')"
    model = ChannelSettings(username="bob", password=secret)
    for shown in (repr(model), str(model), f"{model}", f"{secret}"):
        assert payload not in shown
        assert "EncryptedSecret(kid='k1')" in shown


def test_box_repr_shows_key_ids_not_keys():
    """The keyring's repr lists key ids and which is active, never key material."""
    shown = repr(ROTATED_BOX)
    assert "k2" in shown
    assert "k1" in shown
    assert KEY_1 not in shown
    assert KEY_2 not in shown


@pytest.mark.parametrize(
    "value",
    ["hunter2-plaintext", {"ciphertext": "hunter2-plaintext"}, {"pw": "hunter2-plaintext"}, 4242],
)
def test_plaintext_in_a_secret_field_is_refused_without_echoing_it(value: object):
    """A plaintext where a ciphertext belongs fails validation, and the error hides the value."""
    with pytest.raises(ValidationError) as caught:
        ChannelSettings(username="bob", password=value)
    error = caught.value
    assert error.errors()[0]["loc"][0] == "password"
    assert "hunter2" not in str(error)
    assert "4242" not in str(error)
    assert "hunter2" not in repr(error.errors())


def test_bare_ciphertext_string_is_accepted():
    """A secret field also accepts the ciphertext string itself."""
    secret = OLD_BOX.encrypt(PLAINTEXT)
    model = ChannelSettings(username="bob", password=secret.ciphertext)
    assert model.password == secret


# --- tampering and wrong keys ----------------------------------------------------------------


@given(plaintext=st.text(max_size=64), data=st.data())
def test_any_flipped_bit_is_detected(plaintext: str, data: st.DataObject):
    """Changing any bit of nonce, ciphertext or tag makes decryption fail."""
    secret = OLD_BOX.encrypt(plaintext)
    raw = bytearray(_payload(secret))
    index = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    raw[index] ^= 1 << bit
    with pytest.raises(SecretDecryptError):
        OLD_BOX.decrypt(_with_payload(secret, bytes(raw)))


def test_key_id_is_bound_to_the_ciphertext():
    """Relabelling a ciphertext with another key id fails, even if both ids hold the same key."""
    twin = SecretBox.from_env(f"a:{KEY_1},b:{KEY_1}")
    secret = twin.encrypt(PLAINTEXT)
    relabelled = EncryptedSecret(ciphertext=secret.ciphertext.replace("v1:a:", "v1:b:", 1))
    with pytest.raises(SecretDecryptError, match="failed authentication"):
        twin.decrypt(relabelled)


def test_unknown_key_id_is_a_permanent_error_naming_the_kid():
    """A secret from a key the keyring lacks: SecretDecryptError, permanent, names the kid."""
    secret = ROTATED_BOX.encrypt(PLAINTEXT)
    with pytest.raises(SecretDecryptError, match="'k2'") as caught:
        OLD_BOX.decrypt(secret)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.retriable is False


def test_wrong_key_under_the_right_id_fails():
    """Same key id, different key material (a mis-copied keyring) fails authentication."""
    impostor = SecretBox.from_env(f"k1:{KEY_2}")
    with pytest.raises(SecretDecryptError, match="failed authentication"):
        impostor.decrypt(OLD_BOX.encrypt(PLAINTEXT))


@pytest.mark.parametrize(
    "ciphertext",
    ["v2:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "v1:k1:AAAA", "v1:k1:A"],
)
def test_unsupported_or_truncated_ciphertext_fails_cleanly(ciphertext: str):
    """Unknown versions, truncated data and broken base64 raise SecretDecryptError."""
    with pytest.raises(SecretDecryptError):
        OLD_BOX.decrypt(EncryptedSecret(ciphertext=ciphertext))


def test_decrypt_errors_never_contain_plaintext_or_keys():
    """Messages of decrypt failures mention key ids only."""
    secret = OLD_BOX.encrypt(PLAINTEXT)
    raw = bytearray(_payload(secret))
    raw[-1] ^= 1
    for box, candidate in [
        (OLD_BOX, _with_payload(secret, bytes(raw))),
        (NEW_ONLY_BOX, secret),
        (SecretBox.from_env(f"k1:{KEY_2}"), secret),
    ]:
        with pytest.raises(SecretDecryptError) as caught:
            box.decrypt(candidate)
        message = str(caught.value)
        for forbidden in (PLAINTEXT, KEY_1, KEY_2):
            assert forbidden not in message


# --- rotation --------------------------------------------------------------------------------


def test_rotation_old_secret_still_decrypts_then_moves_to_new_key():
    """After adding k2 in front, k1 secrets still decrypt; rotate() re-encrypts them under k2."""
    old = OLD_BOX.encrypt(PLAINTEXT)
    assert ROTATED_BOX.decrypt(old) == PLAINTEXT
    assert ROTATED_BOX.needs_rotation(old)

    rotated = ROTATED_BOX.rotate(old)
    assert rotated.kid == "k2"
    assert not ROTATED_BOX.needs_rotation(rotated)
    assert ROTATED_BOX.decrypt(rotated) == PLAINTEXT
    # once k1 is retired, only the rotated secret is readable
    assert NEW_ONLY_BOX.decrypt(rotated) == PLAINTEXT
    with pytest.raises(SecretDecryptError):
        NEW_ONLY_BOX.decrypt(old)


def test_rotate_leaves_secrets_on_the_active_key_unchanged():
    """rotate() of a secret already under the active key returns it as is (no churn)."""
    current = ROTATED_BOX.encrypt(PLAINTEXT)
    assert ROTATED_BOX.rotate(current) is current


def test_new_secrets_use_the_first_key():
    """The first key of the variable is the active one."""
    assert ROTATED_BOX.active_kid == "k2"
    assert ROTATED_BOX.kids == ("k2", "k1")
    assert ROTATED_BOX.encrypt("x").kid == "k2"


# --- keyring configuration -------------------------------------------------------------------


def test_generated_keys_are_random_256_bit():
    """generate_key gives 32 random bytes as URL-safe base64, usable after 'kid:'."""
    key = SecretBox.generate_key()
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert key != SecretBox.generate_key()
    assert SecretBox.from_env(f"new:{key}").active_kid == "new"


def test_keyring_ignores_whitespace_and_a_trailing_comma():
    """Spaces and newlines around entries and a trailing comma do not change the keys."""
    tidy = SecretBox.from_env(f"k2:{KEY_2},k1:{KEY_1}")
    messy = SecretBox.from_env(f" k2 : {KEY_2} ,\n k1:{KEY_1},\n")
    assert messy.kids == ("k2", "k1")
    assert messy.decrypt(tidy.encrypt(PLAINTEXT)) == PLAINTEXT


def test_keyring_standard_and_urlsafe_encodings_give_the_same_key():
    """The same key written in either base64 alphabet, padded or not, is the same key."""
    raw = bytes(range(250, 256)) * 5 + b"\xfb\xff"
    standard_text = base64.b64encode(raw).decode()
    assert "+" in standard_text or "/" in standard_text
    standard = SecretBox.from_env(f"k:{standard_text}")
    urlsafe = SecretBox.from_env(f"k:{base64.urlsafe_b64encode(raw).decode().rstrip('=')}")
    assert urlsafe.decrypt(standard.encrypt(PLAINTEXT)) == PLAINTEXT


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        (" , ", "empty"),
        (f"{KEY_1}", "entry 1"),
        (f"k1:{KEY_1},:{KEY_2}", "entry 2"),
        ("k1:not*base64!", "not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "32 bytes"),
        (f"k1:{KEY_1},k1:{KEY_2}", "more than once"),
        (f"k 1:{KEY_1}", "must match"),
        (f"k:1:{KEY_1}", "not valid base64"),
    ],
)
def test_bad_keyrings_are_refused_without_echoing_keys(value: str, message: str):
    """A malformed keyring fails at start-up with a reason, never quoting key material."""
    with pytest.raises(ValueError, match=message) as caught:
        SecretBox.from_env(value)
    assert KEY_1 not in str(caught.value)
    assert KEY_2 not in str(caught.value)
    assert "not*base64" not in str(caught.value)
