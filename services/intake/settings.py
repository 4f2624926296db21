from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings


class IntakeSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore", frozen=True)

    port: int = 8000
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    consumer_group: str = "intake"
    # Off only for a closed test network: every HTTP event then passes without a key.
    require_api_key: bool = True
    # Where resolution answers for dossiers; intake checks the key, then asks it.
    resolution_url: str = "http://127.0.0.1:8001"
