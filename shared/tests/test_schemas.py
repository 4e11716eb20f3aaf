"""The committed JSON Schemas are the contract other teams read; they must match the models."""

from __future__ import annotations

from email_channels.schemas import SCHEMA_DIR, schema_documents
from email_channels.topics import SPECS


def test_every_topic_has_a_committed_schema_matching_its_model() -> None:
    """A model changed without `make schemas` fails here, naming the stale file."""
    stale = [
        name
        for name, text in schema_documents().items()
        if not (SCHEMA_DIR / name).exists()
        or (SCHEMA_DIR / name).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"regenerate with `make schemas`: {stale}"


def test_no_schema_file_without_a_topic() -> None:
    """A removed topic leaves no orphan schema behind."""
    expected = {f"{spec.topic.value}.schema.json" for spec in SPECS}
    assert {p.name for p in SCHEMA_DIR.glob("*.schema.json")} == expected
