from services.metrics.app import build_app
from services.metrics.settings import MetricsSettings
from shared.http import serve
from shared.logs import configure_logging


def main() -> None:
    settings = MetricsSettings()
    configure_logging("metrics", settings.log_level)
    serve(build_app(settings), settings.host, settings.port, settings.log_level)


if __name__ == "__main__":
    main()
