"""python -m services.tts"""

from services.common.app import run_service
from services.tts.app import create_app
from services.tts.settings import Settings


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), settings)


if __name__ == "__main__":
    main()
