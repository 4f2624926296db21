from pydantic_settings import SettingsConfigDict

from shared.clock.policy import SupplementMode
from shared.settings import CommonSettings


class ResolutionSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="RESOLUTION_", extra="ignore", frozen=True)

    port: int = 8001
    consumer_group: str = "resolution"
    max_batch: int = 2000
    consumers: int = 2
    # Dossiers remembered as last written, so a batch does not parse their snapshots again. Measured at about
    # 6 KB each with a short timeline (the benchmark's 20,000 per process took 125 MB): 50,000 take ~300 MB.
    dossier_cache_size: int = 50_000
    supplement_mode: SupplementMode = SupplementMode.RESTART
    relay_batch: int = 1000
    # Off holds canonical events in the outbox (maintenance, fault drills); they go out when it is on again.
    relay_enabled: bool = True
    lookup_per_client_per_minute: int = 20
    lookup_misses_per_code_per_hour: int = 10
