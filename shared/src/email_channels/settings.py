"""Settings shared by every service (pydantic-settings).

Each service builds its own settings class once in ``main()`` and passes it down; there is no
module-level settings global. Kafka connection settings always honour ``KAFKA_BOOTSTRAP_SERVERS``
so a user can point everything at their own cluster.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from email_channels.errors import PermanentError
from email_channels.hostpolicy import HostPolicy
from email_channels.secretbox import SECRET_KEYS_ENV, SecretBox
from email_channels.topics import TopicNames


class Compression(StrEnum):
    """Compression of the records a service produces (its ``*_COMPRESSION`` setting).

    aiokafka's gzip is level 9 (costly on mail); zstd, lz4 and snappy use the ``cramjam``
    package, a dependency of this one, so every reader built on it decodes them.
    """

    NONE = "none"
    GZIP = "gzip"
    SNAPPY = "snappy"
    LZ4 = "lz4"
    ZSTD = "zstd"

    @property
    def kafka_name(self) -> str | None:
        """As aiokafka's ``compression_type`` takes it (``None``: uncompressed)."""
        return None if self is Compression.NONE else self.value


class SecretKeysMissing(PermanentError):
    """No usable keyring in EMAIL_CHANNELS_SECRET_KEYS: the service cannot handle secrets."""


class KafkaSettings(BaseSettings):
    """``KAFKA_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    partitions: int = Field(default=6, ge=1, description="partitions of topics we create")
    replication_factor: int = Field(default=1, ge=1)
    min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description="min.insync.replicas of topics we create (unset = the broker's default)",
    )
    require_durable_topics: bool = Field(
        default=False,
        description=(
            "production mode: refuse to start when a contract topic has a replication factor "
            "below 3 or min.insync.replicas below 2 (the Helm chart turns it on; leave it off "
            "for a one-broker local Kafka)"
        ),
    )

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    def client_kwargs(self) -> dict[str, object]:
        """Connection keyword arguments for aiokafka clients."""
        kwargs: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in {"SSL", "SASL_SSL"}:
            from aiokafka.helpers import create_ssl_context  # noqa: PLC0415 - only when used

            kwargs["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return kwargs


class CommonSettings(BaseSettings):
    """``EMAIL_CHANNELS_*`` environment variables every service reads."""

    model_config = SettingsConfigDict(env_prefix="EMAIL_CHANNELS_", extra="ignore")

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    blob_store_url: str = Field(
        default="file://./var/blobs",
        description="file:///path for local disk, s3://bucket/prefix for S3-compatible stores",
    )
    inline_max_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        le=512 * 1024,  # base64 + JSON must stay below Kafka's default 1 MB record limit
        description="larger raw MIME goes to the blob store",
    )
    secret_keys: SecretStr | None = Field(
        default=None, description="keyring 'kid:base64key,...'; the first key encrypts"
    )
    ca_file: Path | None = Field(
        default=None, description="extra CA bundle trusted for mail servers (besides the system's)"
    )
    metrics_port: int | None = Field(default=None, description="Prometheus /metrics port")
    health_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="port of /healthz and /readyz (email_channels.health); unset = not served",
    )
    health_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - the kubelet probes the pod's IP
        description="address the health endpoints listen on",
    )
    allowed_hosts: str = Field(
        default="",
        description=(
            "comma-separated hosts or CIDRs that admin-supplied mail hosts may resolve to even "
            "though they are loopback, link-local or private"
        ),
    )

    def secret_box(self, *, needed_for: str) -> SecretBox:
        """The keyring every service shares; a clear error naming the variable when unusable."""
        value = self.secret_keys.get_secret_value().strip() if self.secret_keys else ""
        if not value:
            raise SecretKeysMissing(
                f"{SECRET_KEYS_ENV} is not set, but it is needed to {needed_for}. Generate a "
                f'key with\n  {SECRET_KEYS_ENV}=k1:$(python -c "from email_channels.secretbox '
                'import SecretBox; print(SecretBox.generate_key())")'
                "\nand give every service the same value."
            )
        try:
            return SecretBox.from_env(value)
        except ValueError as exc:
            raise SecretKeysMissing(f"{SECRET_KEYS_ENV} is invalid: {exc}") from None

    def host_policy(self) -> HostPolicy:
        """Which admin-supplied mail hosts may be contacted (EMAIL_CHANNELS_ALLOWED_HOSTS)."""
        return HostPolicy.parse(self.allowed_hosts)
