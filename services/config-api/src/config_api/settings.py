"""config-api settings: ``CONFIG_API_*`` variables, plus the shared ``KAFKA_*`` and
``EMAIL_CHANNELS_*`` ones (each nested group reads its own prefix).

Built once in ``main()`` and passed down; there is no module-level settings object.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from email_channels.settings import CommonSettings, KafkaSettings


class ConfigApiSettings(BaseSettings):
    """``CONFIG_API_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="CONFIG_API_", extra="ignore")

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    root_path: str = Field(
        default="", description="path prefix when served behind a proxy, e.g. /config"
    )
    writer_id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")] = Field(
        default="config-api",
        description=(
            "Kafka transactional id (behind the topic prefix) of the one instance allowed to "
            "write; a newly started instance fences the previous one"
        ),
    )
    startup_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=60.0, description="bound of one attempt to connect and catch up at start-up"
    )
    write_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=10.0, description="bound of reading a write back before answering it"
    )
    ensure_topics: bool = Field(
        default=False,
        description=(
            "create missing contract topics at start (handy locally; in production topics "
            "are managed resources)"
        ),
    )
    access_log: bool = True

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    common: CommonSettings = Field(default_factory=CommonSettings)

    @property
    def transactional_id(self) -> str:
        return f"{self.kafka.topic_prefix}{self.writer_id}"
