"""Secret box: passwords, client secrets and refresh tokens are encrypted before they reach Kafka.

Keys — a keyring of named 256-bit AES keys, configured as one environment variable::

    EMAIL_CHANNELS_SECRET_KEYS="k2:<base64 key>,k1:<base64 key>"

The first key is the *active* one: every new secret is encrypted with it. The others are kept
only to decrypt secrets written before the last rotation. Rotating keys:

1. generate a key (:meth:`SecretBox.generate_key`) and put it **first**: ``k3:...,k2:...,k1:...``;
   roll the services (every service can now read k3 secrets, and writes only k3);
2. re-encrypt stored secrets (:meth:`SecretBox.rotate`, e.g. config-api re-saving each channel);
3. when no record uses an old key id any more, drop it from the variable.

Ciphertext — AES-256-GCM with a random 96-bit nonce, as one printable string::

    v1:<kid>:<base64url(nonce || ciphertext || tag), no padding>

The header ``v1:<kid>`` is the GCM associated data, so neither the format version nor the key
id can be altered without the tag check failing. Decrypting picks the key by ``<kid>``.

Errors never contain plaintext or key material: :class:`SecretDecryptError` (a PermanentError)
for an unknown key id, an unsupported format or a failed authentication; ``ValueError`` for a
malformed keyring.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, model_validator

from email_channels.errors import PermanentError
from email_channels.redaction import redact_secrets

__all__ = [
    "CIPHERTEXT_PATTERN",
    "SECRET_KEYS_ENV",
    "EncryptedSecret",
    "SecretBox",
    "SecretDecryptError",
    "redact_secrets",  # lives in email_channels.redaction; re-exported for logconfig
]

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

SECRET_KEYS_ENV: Final = "EMAIL_CHANNELS_SECRET_KEYS"  # noqa: S105 - a variable name, not a key
FORMAT_VERSION: Final = "v1"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16

KID_PATTERN: Final = r"[A-Za-z0-9_.-]{1,64}"
# Any version is accepted by the model so a record written by a newer release still parses;
# SecretBox.decrypt refuses versions it does not know.
CIPHERTEXT_PATTERN: Final = rf"^v[0-9]+:{KID_PATTERN}:[A-Za-z0-9_-]+$"
_KID_RE: Final = re.compile(rf"^{KID_PATTERN}$")
_CIPHERTEXT_RE: Final = re.compile(CIPHERTEXT_PATTERN)
_HIDDEN_INPUT: Final = "<hidden: not an encrypted secret>"


class SecretDecryptError(PermanentError):
    """A secret cannot be decrypted: unknown key id, unsupported format or tampered data."""


class EncryptedSecret(BaseModel):
    """An encrypted secret as it travels in events: ``{"ciphertext": "v1:<kid>:<data>"}``.

    Validation also accepts the bare ciphertext string. Its ``repr``/``str`` show only the
    key id, and validation errors never echo the input (it may be a pasted plaintext).
    """

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    ciphertext: str = Field(
        pattern=CIPHERTEXT_PATTERN,
        repr=False,
        description="v1:<key id>:<base64url(nonce || AES-256-GCM ciphertext || tag)>",
    )

    @model_validator(mode="before")
    @classmethod
    def _never_echo_plaintext(cls, data: Any) -> Any:
        """Accept a bare ciphertext string; swap anything invalid for a placeholder.

        A validation error quotes its input, and the input of an invalid secret is most
        likely a plaintext pasted where a ciphertext belongs: the placeholder fails the
        pattern in its place, so the error names the field but never shows the value.
        """
        if isinstance(data, EncryptedSecret):
            return data
        candidate = data.get("ciphertext") if isinstance(data, Mapping) else data
        if isinstance(candidate, str) and _CIPHERTEXT_RE.fullmatch(candidate):
            return {"ciphertext": candidate}
        return {"ciphertext": _HIDDEN_INPUT}

    @property
    def version(self) -> str:
        """The format version, e.g. ``v1``."""
        return self.ciphertext.split(":", 2)[0]

    @property
    def kid(self) -> str:
        """The id of the key this secret was encrypted with."""
        return self.ciphertext.split(":", 2)[1]

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "kid", self.kid

    def __str__(self) -> str:
        return repr(self)


class SecretBox:
    """Encrypts with the active key, decrypts with whichever key the ciphertext names."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        """``keys`` as ``(key id, 32-byte key)`` pairs; the first is the active key."""
        if not keys:
            raise ValueError("the secret keyring is empty: at least one key is required")
        ciphers: dict[str, AESGCM] = {}
        for kid, key in keys:
            if not _KID_RE.fullmatch(kid):
                raise ValueError(f"secret key id {kid!r} must match {KID_PATTERN}")
            if kid in ciphers:
                raise ValueError(f"secret key id {kid!r} appears more than once in the keyring")
            if len(key) != KEY_BYTES:
                raise ValueError(
                    f"secret key {kid!r} must be {KEY_BYTES} bytes (AES-256), got {len(key)}"
                )
            ciphers[kid] = AESGCM(key)
        self._ciphers = ciphers
        self._active_kid = keys[0][0]

    @classmethod
    def from_env(cls, value: str) -> SecretBox:
        """Parse the ``EMAIL_CHANNELS_SECRET_KEYS`` format: ``k2:<base64>,k1:<base64>``.

        Keys may be standard or URL-safe base64, padded or not; whitespace around entries
        is ignored.
        """
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        if not entries:
            raise ValueError(f"{SECRET_KEYS_ENV} is empty: expected 'kid:<base64 key>,...'")
        keys: list[tuple[str, bytes]] = []
        for position, entry in enumerate(entries, start=1):
            kid, sep, encoded = entry.partition(":")
            kid = kid.strip()
            if not sep or not kid:
                raise ValueError(f"{SECRET_KEYS_ENV} entry {position} is not 'kid:<base64 key>'")
            try:
                key = _b64decode(encoded.strip())
            except ValueError:
                raise ValueError(f"{SECRET_KEYS_ENV} key {kid!r} is not valid base64") from None
            keys.append((kid, key))
        return cls(keys)

    @staticmethod
    def generate_key() -> str:
        """A fresh random 256-bit key, URL-safe base64 — the part after ``kid:``."""
        return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")

    @property
    def active_kid(self) -> str:
        """The key id new secrets are encrypted with."""
        return self._active_kid

    @property
    def kids(self) -> tuple[str, ...]:
        """All key ids in the keyring, active first."""
        return tuple(self._ciphers)

    def __repr__(self) -> str:
        return f"SecretBox(active_kid={self._active_kid!r}, kids={self.kids!r})"

    def encrypt(self, plaintext: str) -> EncryptedSecret:
        """Encrypt with the active key (a fresh random nonce each time)."""
        try:
            data = plaintext.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("secret is not encodable as UTF-8 (lone surrogate)") from None
        header = f"{FORMAT_VERSION}:{self._active_kid}"
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[self._active_kid].encrypt(nonce, data, header.encode("ascii"))
        payload = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return EncryptedSecret(ciphertext=f"{header}:{payload}")

    def decrypt(self, secret: EncryptedSecret) -> str:
        """The plaintext; SecretDecryptError if the key is unknown or the data was altered."""
        version, kid, payload = secret.ciphertext.split(":", 2)
        if version != FORMAT_VERSION:
            raise SecretDecryptError(
                f"secret format {version!r} is not supported (this release reads {FORMAT_VERSION})"
            )
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SecretDecryptError(
                f"secret was encrypted with key id {kid!r}, which is not in the keyring "
                f"{list(self._ciphers)} ({SECRET_KEYS_ENV})"
            )
        try:
            raw = _b64decode(payload)
        except ValueError:
            raise SecretDecryptError(f"secret (key id {kid!r}) is not valid base64") from None
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise SecretDecryptError(f"secret (key id {kid!r}) is truncated")
        nonce, sealed = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
        try:
            data = cipher.decrypt(nonce, sealed, f"{version}:{kid}".encode("ascii"))
        except InvalidTag:
            raise SecretDecryptError(
                f"secret (key id {kid!r}) failed authentication: altered, or key {kid!r} "
                "is not the key it was encrypted with"
            ) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretDecryptError(f"secret (key id {kid!r}) is not UTF-8 text") from None

    def needs_rotation(self, secret: EncryptedSecret) -> bool:
        """Whether ``secret`` is encrypted with a key other than the active one."""
        return secret.version != FORMAT_VERSION or secret.kid != self._active_kid

    def rotate(self, secret: EncryptedSecret) -> EncryptedSecret:
        """Re-encrypt with the active key; a secret already on it is returned unchanged."""
        if not self.needs_rotation(secret):
            return secret
        return self.encrypt(self.decrypt(secret))


def _b64decode(text: str) -> bytes:
    """Decode standard or URL-safe base64, padding optional; ValueError if malformed."""
    normalised = text.replace("+", "-").replace("/", "_").rstrip("=")
    normalised += "=" * (-len(normalised) % 4)
    try:
        return base64.b64decode(normalised, altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError("invalid base64") from exc
