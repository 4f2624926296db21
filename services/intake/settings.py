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
    # Ingress records signed with an API key (services/intake/ingress.py) are always checked as that key;
    # with this on, unsigned ones are refused too, so the Kafka door is as closed as the HTTP one.
    require_signed_ingress: bool = False
    # Where resolution answers for dossiers; intake checks the key, then asks it.
    resolution_url: str = "http://127.0.0.1:8001"
