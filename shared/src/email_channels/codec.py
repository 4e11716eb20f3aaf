"""Kafka record values <-> event models, in one place.

Values are UTF-8 JSON of the event models; keys are UTF-8 strings. A record that does not decode
raises :class:`~email_channels.errors.PoisonRecord`, which the consume loop dead-letters.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError

from email_channels.errors import PoisonRecord
from email_channels.events import Contract

M = TypeVar("M", bound=Contract)

Headers = list[tuple[str, bytes]]


def encode(event: Contract) -> bytes:
    return event.model_dump_json(by_alias=True).encode("utf-8")


def decode(model: type[M], value: bytes | None) -> M:
    if value is None:
        raise PoisonRecord(f"empty value where a {model.__name__} was expected")
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in err["loc"]) or "<root>" for err in exc.errors())
        raise PoisonRecord(
            f"not a valid {model.__name__}: {fields}: {exc.errors()[0]['msg']}"
        ) from exc


def encode_key(key: str) -> bytes:
    return key.encode("utf-8")


def decode_key(key: bytes | None) -> str | None:
    return key.decode("utf-8", errors="replace") if key is not None else None


def event_headers(event: Contract, **extra: str) -> Headers:
    """Standard headers: content type and schema name/version, plus any extra (e.g. campaign-id)."""
    version = getattr(event, "schema_version", 1)
    headers: Headers = [
        ("content-type", b"application/json"),
        ("schema", f"{type(event).__name__}/v{version}".encode()),
    ]
    headers.extend((name, value.encode("utf-8")) for name, value in extra.items())
    return headers


def record_headers(
    event: Contract | None, headers: Headers | None = None, **header_values: str
) -> Headers:
    """Headers of a produced record: the standard ones (none for a tombstone) plus extras."""
    standard = event_headers(event, **header_values) if event is not None else []
    return standard + list(headers or [])


def header(headers: Headers | tuple[tuple[str, bytes], ...] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", errors="replace")
    return None
