from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings


class NotifySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFY_", extra="ignore", frozen=True)

    port: int = 8003
    consumer_group: str = "notify"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    mail_from: str = "Trung tâm Phục vụ hành chính công <khong-tra-loi@tthc.gov.vn>"
    lookup_base_url: str = "http://127.0.0.1:8001/tra-cuu"
    survey_base_url: str = "http://127.0.0.1:8003/khao-sat"
    # Unset: /huy-nhan-tin next to the survey page, which is served by the same service.
    opt_out_base_url: str | None = None
    sms_url: str = "http://127.0.0.1:8025/sms"
    zalo_url: str = "http://127.0.0.1:8025/zalo"
    # Some SMS gateways take only ASCII: then messages go without diacritics.
    sms_ascii: bool = False
    max_attempts: int = 8
    # Retries wait retry_base_seconds * 2^(attempts - 1), at most retry_max_seconds.
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    gateway_timeout_seconds: float = 10.0
    # Messages in flight at once per provider. One at a time, a provider answering in 50 ms holds a channel to
    # 20 a second (4 sent 85 messages a second, 16 sent 194, against 25); real gateways answer slower still.
    # Each sender records an outcome before its next send, so a kill leaves the provider at most this many
    # copies per channel to drop (by Message-ID or idempotency key). Four cost no more than one end to end
    # since the due-soon cancel stopped reading every waiting alert (docs/performance.md, "Notify").
    senders_per_channel: int = Field(default=4, ge=1, le=32)
    # Sends per second and burst per provider (their contracts cap them), e.g. NOTIFY_RATE_PER_SECOND='{"sms": 5}'.
    rate_per_second: dict[str, float] = Field(
        default_factory=lambda: {"email": 20.0, "sms": 10.0, "zalo": 10.0, "webhook": 10.0})
    rate_burst: dict[str, int] = Field(default_factory=lambda: {"email": 20, "sms": 10, "zalo": 10, "webhook": 10})
    # After this many temporary failures in a row a provider is left alone for the cool-down, then probed.
    breaker_threshold: int = 5
    breaker_cool_down_seconds: float = 30.0
    # Providers' delivery callbacks must send it as `Authorization: Bearer ...`; unset, callbacks are refused.
    callback_secret: SecretStr | None = None
    survey_comment_max_chars: int = 2000
    # Each handling unit's own system gets due-soon alerts at its URL, e.g.
    # NOTIFY_UNIT_WEBHOOKS='{"07420": "https://motcua.xa.example.vn/tthc"}'; units not listed get the default,
    # if any; with neither, a unit gets no alerts. Requests are signed with the secret (HMAC-SHA256).
    unit_webhooks: dict[str, str] = Field(default_factory=dict)
    default_webhook_url: str | None = None
    webhook_secret: SecretStr | None = None

    def webhook_url(self, unit_code: str) -> str | None:
        return self.unit_webhooks.get(unit_code) or self.default_webhook_url

    @property
    def opt_out_url(self) -> str:
        return self.opt_out_base_url or self.survey_base_url.rstrip("/").rsplit("/", 1)[0] + "/huy-nhan-tin"
