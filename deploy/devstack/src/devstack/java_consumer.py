"""The Java consumer of ``examples/java-consumer``: built with Maven, run against a topic.

It reads a topic with the Apache Kafka Java client (read_committed) and validates every record
against a committed JSON Schema, proving that the schemas, not the Python models, are the
contract. The jar is built once per source version and cached outside the work tree
(``~/.cache/email-channels/java-consumer/<sha256 of the sources>/``), so a fresh clone does not
pay the Maven build again on a machine that already built the same sources.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devstack.kafka import java_executable

PROJECT = Path(__file__).resolve().parents[4] / "examples" / "java-consumer"
SCHEMAS = Path(__file__).resolve().parents[4] / "shared" / "schemas"
JAR_NAME = "routed-validator.jar"


@dataclass(frozen=True)
class Validation:
    ok: bool
    output: str


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted([PROJECT / "pom.xml", *(PROJECT / "src").rglob("*.java")]):
        digest.update(path.relative_to(PROJECT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_jar() -> Path:
    """The validator's jar, built with Maven (from Maven Central) unless already cached."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    target = cache / "email-channels" / "java-consumer" / _source_digest() / JAR_NAME
    if target.exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to build examples/java-consumer")
    subprocess.run(  # noqa: S603 - our own build, fixed arguments
        [mvn, "-q", "-B", "package", "-DskipTests"], cwd=PROJECT, check=True, timeout=600
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PROJECT / "target" / JAR_NAME, target)
    return target


def validate_topic(
    bootstrap_servers: str, topic: str, schema: str, *, min_records: int, timeout_s: int = 60
) -> Validation:
    """Run the validator on ``topic`` with ``shared/schemas/<schema>``; ok when every record (at
    least ``min_records``) validated and carried the matching campaign header."""
    jar = build_jar()
    result = subprocess.run(  # noqa: S603 - our own jar, fixed arguments
        [
            java_executable(),
            "-jar",
            str(jar),
            bootstrap_servers,
            topic,
            str(SCHEMAS / schema),
            str(min_records),
            str(timeout_s),
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s + 60,
        check=False,
    )
    return Validation(ok=result.returncode == 0, output=result.stdout + result.stderr)
