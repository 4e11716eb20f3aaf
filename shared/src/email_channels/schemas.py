"""The topic contracts as documents, committed under ``shared/schemas/``.

- ``<topic>.schema.json``: the JSON Schema of each topic's value (as it appears on the wire);
- ``asyncapi.json``: an AsyncAPI 3.1 document of all topics (keys, cleanup policies, headers),
  whose message payloads reference the schema files.

``python -m email_channels.schemas`` (``make schemas``) rewrites them; a test fails when a model
changed without regenerating, so every contract change shows up in review as a schema diff.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from email_channels.events import TOPIC_MODELS
from email_channels.headers import (
    CAMPAIGN_HEADER,
    LOOP_HEADER,
    ORIGINAL_TOPIC_HEADER,
    PUBLISHER_HEADER,
    REPLAY_HEADER,
    RETRY_DUE_HEADER,
    RETRY_LEVEL_HEADER,
)
from email_channels.topics import SPECS, Topic

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"

ALL_TOPICS_BUT_DLQ = frozenset(spec.topic for spec in SPECS if spec.topic is not Topic.DLQ)

RECORD_HEADERS: dict[str, tuple[frozenset[Topic], str]] = {
    CAMPAIGN_HEADER: (
        frozenset({Topic.ROUTED}),
        "the campaign id, to filter without decoding",
    ),
    RETRY_LEVEL_HEADER: (
        frozenset({Topic.OUTBOUND}),
        (
            "on the sender's retry topics (<email.outbound>.retry.N): the delay level N the record "
            "waits in; absent on email.outbound itself"
        ),
    ),
    RETRY_DUE_HEADER: (
        frozenset({Topic.OUTBOUND}),
        "on the sender's retry topics: when the record is due (epoch milliseconds)",
    ),
    ORIGINAL_TOPIC_HEADER: (
        frozenset({Topic.OUTBOUND}),
        (
            "on a record re-published by a stage (the sender's retry topics): the topic it was "
            "first written to; a DLQ replay sends the record back there"
        ),
    ),
    REPLAY_HEADER: (
        ALL_TOPICS_BUT_DLQ,
        (
            "on a record re-published from email.dlq (email-channels dlq replay): "
            "<dlq topic>/<partition>/<offset> of its dead letter; the sender then sends again an "
            "outbound whose earlier outcome was failed, rejected or deferred"
        ),
    ),
    PUBLISHER_HEADER: (
        frozenset({Topic.DELIVERY}),
        (
            "a random id of the sender process (one life of it) that published the event; "
            "that process's own ledger reader skips it, other readers may ignore it"
        ),
    ),
}
"""Every Kafka record header of the contract, named once: name -> (topics carrying it, what it
says). The AsyncAPI document lists them under ``x-record-headers`` and ``components.schemas``;
each message's ``headers`` refers to the ones its topic carries."""


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


ASYNCAPI_FILE = "asyncapi.json"


def asyncapi_document() -> str:
    """An AsyncAPI 3.1 description of every topic; payloads point at the schema files."""
    channels: dict[str, object] = {}
    messages: dict[str, object] = {}
    for spec in SPECS:
        model = TOPIC_MODELS[spec.model]
        name = spec.topic.value.replace("email.", "").replace("-", "_")
        headers: dict[str, object] = {
            "content-type": {"type": "string", "const": "application/json"},
            "schema": {"type": "string", "const": f"{spec.model}/v{_version(model)}"},
        }
        for header, (topics, _) in RECORD_HEADERS.items():
            if spec.topic in topics:
                headers[header] = {"$ref": f"#/components/schemas/{header}"}
        messages[spec.model] = {
            "name": spec.model,
            "title": spec.model,
            "summary": (model.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "headers": {"type": "object", "properties": headers},
            "payload": {
                "schemaFormat": "application/schema+json;version=draft-07",
                "schema": {"$ref": f"./{spec.topic.value}.schema.json"},
            },
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": spec.key},
                    "bindingVersion": "0.5.0",
                }
            },
        }
        channels[name] = {
            "address": spec.topic.value,
            "description": (
                f"{spec.description}. Key: {spec.key}. Cleanup: {spec.cleanup}. "
                "The address takes the deployment's KAFKA_TOPIC_PREFIX."
            ),
            "messages": {spec.model: {"$ref": f"#/components/messages/{spec.model}"}},
            "bindings": {
                "kafka": {
                    "topic": spec.topic.value,
                    "topicConfiguration": {"cleanup.policy": [spec.cleanup]},
                    "bindingVersion": "0.5.0",
                }
            },
        }
    document = {
        "asyncapi": "3.1.0",
        "info": {
            "title": "Email Channels topics",
            "version": "1",
            "description": (
                "The Kafka topics of Email Channels: the contract with campaign services and "
                "other consumers. Values are UTF-8 JSON; readers must ignore unknown fields. "
                "Records of email.routed are written in Kafka transactions: read them with "
                "isolation.level=read_committed. "
                f"Every mail the sender sends carries the mail header `{LOOP_HEADER}` (value: "
                "the channel id); inbound mail carrying it is flagged as a loop "
                "(RoutedEmail.flags.loop)."
            ),
        },
        "x-mail-headers": {
            LOOP_HEADER: "stamped by the sender on every sent mail (value: the channel id); "
            "seen inbound, the router flags the mail as a loop",
        },
        "x-record-headers": {
            header: f"on {_topics_text(topics)}: {text}"
            for header, (topics, text) in RECORD_HEADERS.items()
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {
            "messages": messages,
            "schemas": {
                header: {"type": "string", "description": text}
                for header, (_, text) in RECORD_HEADERS.items()
            },
        },
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _topics_text(topics: frozenset[Topic]) -> str:
    if topics == ALL_TOPICS_BUT_DLQ:
        return "every topic but email.dlq"
    return ", ".join(sorted(topic.value for topic in topics))


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
    path = directory / ASYNCAPI_FILE
    path.write_text(asyncapi_document(), encoding="utf-8")
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
