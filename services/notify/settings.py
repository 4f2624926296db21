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
    sms_url: str = "http://127.0.0.1:8025/sms"
    zalo_url: str = "http://127.0.0.1:8025/zalo"
    # Some SMS gateways take only ASCII: then messages go without diacritics.
    sms_ascii: bool = False
    max_attempts: int = 8
