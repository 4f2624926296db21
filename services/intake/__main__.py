from services.intake.app import build_app
from services.intake.settings import IntakeSettings
from shared.http import serve
from shared.logs import configure_logging


def main() -> None:
    settings = IntakeSettings()
    configure_logging("intake", settings.log_level)
    serve(build_app(settings), settings.host, settings.port, settings.log_level)


if __name__ == "__main__":
    main()
