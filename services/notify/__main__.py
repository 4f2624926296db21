from services.notify.app import build_app
from services.notify.settings import NotifySettings
from shared.http import run_service

if __name__ == "__main__":
    run_service("notify", NotifySettings(), build_app)
