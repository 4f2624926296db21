from services.metrics.app import build_app
from services.metrics.settings import MetricsSettings
from shared.http import run_service

if __name__ == "__main__":
    run_service("metrics", MetricsSettings(), build_app)
