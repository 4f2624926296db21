from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings


class MetricsSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="METRICS_", extra="ignore", frozen=True)

    port: int = 8002
    consumer_group: str = "metrics"
