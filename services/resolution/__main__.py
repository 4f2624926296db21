from services.resolution.app import build_app
from services.resolution.settings import ResolutionSettings
from shared.http import serve
from shared.logs import configure_logging


def main() -> None:
    settings = ResolutionSettings()
    configure_logging("resolution", settings.log_level)
    serve(build_app(settings), settings.host, settings.port, settings.log_level)


if __name__ == "__main__":
    main()
