"""The fingerprint of the topic contracts: sha256 over every topic's JSON Schema document."""

from __future__ import annotations

import hashlib

from email_channels.schemas import schema_documents


def schema_fingerprint() -> str:
    """sha256 of the schema documents in file-name order (what ``make schemas`` commits)."""
    digest = hashlib.sha256()
    for name, text in sorted(schema_documents().items()):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


if __name__ == "__main__":
    print(schema_fingerprint())  # noqa: T201
