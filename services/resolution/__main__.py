from services.resolution.app import build_app
from services.resolution.settings import ResolutionSettings
from shared.http import run_service

if __name__ == "__main__":
    run_service("resolution", ResolutionSettings(), build_app)
