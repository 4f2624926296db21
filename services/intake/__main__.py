from services.intake.app import build_app
from services.intake.settings import IntakeSettings
from shared.http import run_service

if __name__ == "__main__":
    run_service("intake", IntakeSettings(), build_app)
