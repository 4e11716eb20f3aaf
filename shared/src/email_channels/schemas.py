"""JSON Schemas of the topic contracts, committed under ``shared/schemas/``.

``python -m email_channels.schemas`` (``make schemas``) rewrites them; a test fails when a model
changed without regenerating, so every contract change shows up in review as a schema diff.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from email_channels.events import TOPIC_MODELS
from email_channels.topics import SPECS

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def schema_documents() -> dict[str, str]:
    """File name -> JSON text, one file per topic model (as it appears on the wire)."""
    documents: dict[str, str] = {}
    for spec in SPECS:
        model = TOPIC_MODELS[spec.model]
        schema = model.model_json_schema(by_alias=True, mode="serialization")
        schema["$id"] = f"email-channels/{spec.model}/v{_version(model)}"
        schema["x-topic"] = spec.topic.value
        schema["x-key"] = spec.key
        schema["x-cleanup-policy"] = spec.cleanup
        documents[f"{spec.topic.value}.schema.json"] = (
            json.dumps(schema, indent=2, sort_keys=True) + "\n"
        )
    return documents


def _version(model: type) -> int:
    field = model.model_fields.get("schema_version")  # type: ignore[attr-defined]
    return int(field.default) if field is not None else 1


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_documents().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args()
    for path in write(args.dir):
        print(path)  # noqa: T201


if __name__ == "__main__":
    main()
