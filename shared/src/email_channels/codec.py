"""Kafka record values <-> event models, in one place.

Values are UTF-8 JSON of the event models; keys are UTF-8 strings. A record that does not decode
raises :class:`~email_channels.errors.PoisonRecord`, which the consume loop dead-letters.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import TypeVar

from pydantic import ValidationError

from email_channels.errors import PoisonRecord
from email_channels.events import Base64Bytes, Contract

M = TypeVar("M", bound=Contract)

Headers = list[tuple[str, bytes]]


def encode(event: Contract) -> bytes:
    """UTF-8 JSON of ``event``.

    Top-level ``Base64Bytes`` fields (a message's raw MIME, a dead letter's original record)
    are base64-encoded straight into the output bytes instead of through pydantic's str
    serializer: for a 26 KB mail that is half the encoding time (the same JSON document, the
    field moved to the end).
    """
    spliced = _base64_fields(type(event))
    if not spliced:
        return event.model_dump_json(by_alias=True).encode("utf-8")
    head = event.model_dump_json(by_alias=True, exclude={name for name, _ in spliced})
    parts = [head[:-1].encode("utf-8")]
    separator = b"," if head != "{}" else b""
    for name, key in spliced:
        value = getattr(event, name)
        parts.append(separator + key)
        parts.append(b"null" if value is None else b'"' + base64.b64encode(value) + b'"')
        separator = b","
    parts.append(b"}")
    return b"".join(parts)


@functools.cache
def _base64_fields(model: type[Contract]) -> tuple[tuple[str, bytes], ...]:
    """(attribute name, b'"json key":') of the model's top-level Base64Bytes fields."""
    marker = Base64Bytes.__metadata__  # type: ignore[attr-defined]
    found = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        members = getattr(annotation, "__args__", (annotation,))
        if info.metadata == list(marker) or any(
            getattr(m, "__metadata__", None) == marker for m in members
        ):
            key = info.serialization_alias or info.alias or name
            found.append((name, json.dumps(key).encode() + b":"))
    return tuple(found)


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
