"""Keep secrets out of logs: a structlog processor that masks them before rendering.

What is masked, at any depth of dicts, lists, tuples and sets, and inside pydantic models:

- the value of any key whose name looks secret (``password``, ``client_secret``,
  ``refresh_token``, ``Authorization``, ``api_key``, ``secret_key``, ``credentials``,
  ``cookie``...), except names that describe a secret rather than hold it (``token_url``,
  ``token_endpoint``, ``token_type``, ``secret_kid``, ``expires_in``...); ``None`` and
  booleans are kept, they say whether a secret is set, not what it is;
- every ``pydantic.SecretStr`` / ``SecretBytes``, whatever its key;
- the password in a URL's user-info, in any string (``imap://user:pw@host`` →
  ``imap://user:**********@host``).

A pydantic model becomes a dict of the fields its own ``repr`` shows (so fields declared with
``repr=False`` stay hidden, and an :class:`~email_channels.secretbox.EncryptedSecret` shows only
its key id). The caller's objects are never modified: changed containers are copies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, SecretBytes, SecretStr

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

REDACTED: Final = "**********"
MAX_DEPTH: Final = 32

# Compared against the key lower-cased with everything but letters and digits removed.
_SECRET_MARKERS: Final = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "bearer",
    "apikey",
    "privatekey",
    "accesskey",
    "signingkey",
    "encryptionkey",
    "masterkey",
    "sessionkey",
    "keymaterial",
    "credential",
    "cookie",
    "clientassertion",
)
_SECRET_EXACT: Final = frozenset({"pwd", "pass", "auth"})
_DESCRIPTIVE_SUFFIXES: Final = (
    "url",
    "uri",
    "endpoint",
    "type",
    "kid",
    "keyid",
    "kids",
    "keyids",
    "expiresin",
    "expiresat",
    "expiry",
)
_NON_ALNUM: Final = re.compile(r"[^a-z0-9]")
_URL_PASSWORD: Final = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<password>[^@/?#\s]+)@"
)
_URL_TOKEN: Final = re.compile(
    r"(?P<head>[?&](?:authtoken|access_token|refresh_token|client_secret|code|code_verifier)=)"
    r"[^&#\s\"']+",
    re.IGNORECASE,
)
"""Credentials carried in a URL's query (a Graph upload URL's ``authtoken``, an OAuth code)."""


def is_secret_key(name: object) -> bool:
    """Whether a mapping key names a secret value (``client_secret`` yes, ``token_url`` no)."""
    normalised = _NON_ALNUM.sub("", str(name).lower())
    if normalised in _SECRET_EXACT:
        return True
    if not any(marker in normalised for marker in _SECRET_MARKERS):
        return False
    return not normalised.endswith(_DESCRIPTIVE_SUFFIXES)


def redact(value: Any) -> Any:
    """``value`` with every secret in it masked (a copy where anything changed)."""
    return _redact(value, 0)


def redact_secrets(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in the event dict (see the module docstring)."""
    for key, value in event_dict.items():
        event_dict[key] = _redact_entry(key, value, 0)
    return event_dict


def _redact_entry(key: object, value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool) or not is_secret_key(key):
        return _redact(value, depth)
    return REDACTED


def _redact(value: Any, depth: int) -> Any:  # noqa: PLR0911 - one return per kind of value
    if isinstance(value, str):
        if "://" not in value:
            return value
        value = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", value)
        return _URL_TOKEN.sub(rf"\g<head>{REDACTED}", value)
    if isinstance(value, (SecretStr, SecretBytes)):
        return REDACTED
    if depth >= MAX_DEPTH:
        return (
            REDACTED
            if isinstance(value, (Mapping, list, tuple, set, frozenset, BaseModel))
            else value
        )
    if isinstance(value, BaseModel):
        return _redact(_model_as_dict(value), depth + 1)
    if isinstance(value, Mapping):
        return {key: _redact_entry(key, item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_redact(item, depth + 1) for item in value]
        if isinstance(value, list):
            return items
        if isinstance(value, tuple):
            return tuple(items)
        return frozenset(items) if isinstance(value, frozenset) else set(items)
    return value


def _model_as_dict(model: BaseModel) -> dict[str, Any]:
    """The fields the model's own ``repr`` shows, values left as objects for ``_redact``."""
    return {name: value for name, value in model.__repr_args__() if name is not None}
