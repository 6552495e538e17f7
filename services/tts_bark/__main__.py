"""python -m services.tts_bark"""

from services.common.app import run_service
from services.tts_bark.app import create_app
from services.tts_bark.settings import Settings


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), settings)


if __name__ == "__main__":
    main()
