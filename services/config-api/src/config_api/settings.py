"""config-api settings: ``CONFIG_API_*`` variables, plus the shared ``KAFKA_*`` and
``EMAIL_CHANNELS_*`` ones (each nested group reads its own prefix).

Built once in ``main()`` and passed down; there is no module-level settings object.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr
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

    # --- sign-in (config_api.auth) ---
    admin_token: SecretStr | None = Field(
        default=None,
        min_length=24,
        description=(
            "a static admin token for the operator (and `make run`); at least 24 characters. "
            "Send it as `Authorization: Bearer <token>`"
        ),
    )
    oidc_issuer: str | None = Field(default=None, description="OIDC issuer (`iss`) to accept")
    oidc_audience: str | None = Field(default=None, description="audience (`aud`) to require")
    oidc_jwks_url: str | None = Field(default=None, description="the issuer's JWKS document URL")
    oidc_client_id: str | None = Field(
        default=None,
        description="client id of the admin page at the identity provider (a public client: "
        "authorization code + PKCE, no secret); with it the page offers OIDC sign-in",
    )
    oidc_scopes: str = Field(
        default="openid profile email",
        description="scopes the admin page asks for (space-separated); add the API's own scope "
        "where the provider needs one for an access token with `aud` = the audience "
        "(Entra: api://<app>/access_as_user)",
    )
    oidc_redirect_path: str = Field(
        default="/",
        pattern=r"^/[^?#]*$",
        description="where the provider sends the browser back (behind `root_path`): the page "
        "itself; register <page origin><root_path><this> as the client's redirect URI",
    )
    oidc_connect_origins: str = Field(
        default="",
        description="comma-separated extra origins the page may call besides the issuer's "
        "(a token endpoint on another host); added to the page's CSP connect-src",
    )
    oidc_roles_claim: str = Field(
        default="roles",
        description="claim holding the user's roles; a dotted path reaches nested claims "
        "(e.g. realm_access.roles)",
    )
    oidc_admin_roles: str = Field(default="admin", description="comma-separated claim values")
    oidc_viewer_roles: str = Field(default="viewer", description="comma-separated claim values")
    oidc_algorithms: str = Field(default="RS256,ES256,PS256,EdDSA")
    oidc_leeway_s: Annotated[float, Field(ge=0, le=300)] = 30.0
    oidc_jwks_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    metrics_require_auth: bool = Field(
        default=False, description="require a token (viewer) for /metrics"
    )
    trusted_hosts: str = Field(
        default="127.0.0.1,localhost",
        description="comma-separated Host header values served (`*` for any; `*.example.com`)",
    )
    max_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=1024 * 1024, description="larger request bodies are refused with 413"
    )

    # --- validate (config_api.validation) ---
    validate_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=60.0, description="bound of one validation (inbound and outbound together)"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    common: CommonSettings = Field(default_factory=CommonSettings)

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_jwks_url and self.oidc_audience)

    @property
    def oidc_page_enabled(self) -> bool:
        """The admin page can sign in through the provider (it needs a client id too)."""
        return self.oidc_enabled and bool(self.oidc_client_id)

    @property
    def transactional_id(self) -> str:
        return f"{self.kafka.topic_prefix}{self.writer_id}"
