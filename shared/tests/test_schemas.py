"""The committed JSON Schemas are the contract other teams read; they must match the models."""

from __future__ import annotations

import json

from email_channels.schemas import ASYNCAPI_FILE, SCHEMA_DIR, asyncapi_document, schema_documents
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


def test_asyncapi_document_is_current_and_references_existing_schemas() -> None:
    """The AsyncAPI file is regenerated with the schemas, and every payload $ref resolves."""
    committed = (SCHEMA_DIR / ASYNCAPI_FILE).read_text(encoding="utf-8")
    assert committed == asyncapi_document(), "regenerate with `make schemas`"
    document = json.loads(committed)
    refs = [m["payload"]["schema"]["$ref"] for m in document["components"]["messages"].values()]
    assert len(refs) == len(SPECS)
    assert all((SCHEMA_DIR / ref.removeprefix("./")).exists() for ref in refs)
