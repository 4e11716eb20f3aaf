"""Settings: environment variables with the prefix ``AUTOREPLY_`` (Kafka ones are shared)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from email_channels.settings import CommonSettings, KafkaSettings


class AutoreplySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTOREPLY_", extra="ignore")

    campaign_id: str = Field(description="the campaign whose mail this service answers")
    reply_text: str = Field(
        default=(
            "Thank you for your message. We have received it and will answer as soon as we can.\n"
        ),
        description="text of the acknowledgement",
    )
    instance: str = Field(
        default="0",
        description="replica name: part of the Kafka transactional id, stable across restarts",
    )
    poll_timeout_s: float = Field(default=0.5, gt=0)
    max_batch: int = Field(default=200, ge=1, description="records answered per transaction")

    @property
    def group_id(self) -> str:
        return f"campaign-autoreply.{self.campaign_id}"


class Settings:
    """Everything the service reads, built once in ``main`` and passed down."""

    def __init__(self) -> None:
        self.kafka = KafkaSettings()
        self.common = CommonSettings()
        self.autoreply = AutoreplySettings()
