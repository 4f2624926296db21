"""Settings every service reads from the environment; each service extends them in its own class."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KafkaSecurityProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    database_url: str = Field(default="postgresql://postgres@127.0.0.1:55432/tthc", validation_alias="DATABASE_URL")
    # Shared by the services for their internal HTTP calls; when unset those endpoints are open (development).
    internal_token: SecretStr | None = Field(default=None, validation_alias="TTHC_INTERNAL_TOKEN")
    data_keys: SecretStr | None = Field(default=None, validation_alias="TTHC_DATA_KEYS")
    # The key-encryption key that unwraps `id:wrapped:...` entries of TTHC_DATA_KEYS (shared/crypto.py).
    master_key: SecretStr | None = Field(default=None, validation_alias="TTHC_MASTER_KEY")
    master_key_file: str | None = Field(default=None, validation_alias="TTHC_MASTER_KEY_FILE")
    topic_partitions: int = Field(default=6, ge=1, validation_alias="TTHC_TOPIC_PARTITIONS")
    topic_replication: int = Field(default=1, ge=1, validation_alias="TTHC_TOPIC_REPLICATION")
    host: str = Field(default="127.0.0.1", validation_alias="TTHC_BIND_HOST")
    log_level: str = Field(default="INFO", validation_alias="TTHC_LOG_LEVEL")
    # A secured cluster: each service connects as its own principal, whose ACLs allow only what it does.
    kafka_security_protocol: KafkaSecurityProtocol = Field(default="PLAINTEXT",
                                                           validation_alias="KAFKA_SECURITY_PROTOCOL")
    kafka_sasl_mechanism: KafkaSaslMechanism = Field(default="SCRAM-SHA-512", validation_alias="KAFKA_SASL_MECHANISM")
    kafka_sasl_username: str | None = Field(default=None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(default=None, validation_alias="KAFKA_SASL_PASSWORD")

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> CommonSettings:
        # Caught at start-up rather than as an authentication failure the clients would retry forever.
        if self.kafka_security_protocol.startswith("SASL") and not (
                self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs KAFKA_SASL_USERNAME "
                             "and KAFKA_SASL_PASSWORD")
        return self
