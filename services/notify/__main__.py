from services.notify.app import build_app
from services.notify.settings import NotifySettings
from shared.http import serve
from shared.logs import configure_logging


def main() -> None:
    settings = NotifySettings()
    configure_logging("notify", settings.log_level)
    serve(build_app(settings), settings.host, settings.port, settings.log_level)


if __name__ == "__main__":
    main()
