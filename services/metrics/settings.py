from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings


class MetricsSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="METRICS_", extra="ignore", frozen=True)

    port: int = 8002
    consumer_group: str = "metrics"
    # The timers flip each dossier at its instant; the sweep re-derives every state as a safety net.
    sweep_seconds: float = 300.0
    lag_groups: tuple[str, ...] = ("intake", "resolution", "metrics", "notify")
    lag_seconds: float = 15.0
