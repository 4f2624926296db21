"""Settings every service reads from the environment; each service extends them in its own class."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    database_url: str = Field(default="postgresql://postgres@127.0.0.1:55432/tthc", validation_alias="DATABASE_URL")
    # Shared by the services for their internal HTTP calls; when unset those endpoints are open (development).
    internal_token: SecretStr | None = Field(default=None, validation_alias="TTHC_INTERNAL_TOKEN")
    data_keys: SecretStr | None = Field(default=None, validation_alias="TTHC_DATA_KEYS")
    topic_partitions: int = Field(default=6, ge=1, validation_alias="TTHC_TOPIC_PARTITIONS")
    topic_replication: int = Field(default=1, ge=1, validation_alias="TTHC_TOPIC_REPLICATION")
    host: str = Field(default="127.0.0.1", validation_alias="TTHC_BIND_HOST")
    log_level: str = Field(default="INFO", validation_alias="TTHC_LOG_LEVEL")
