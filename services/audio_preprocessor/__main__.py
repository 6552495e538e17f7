"""python -m services.audio_preprocessor"""

from services.audio_preprocessor.app import create_app
from services.audio_preprocessor.settings import Settings
from services.common.app import run_service


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), settings)


if __name__ == "__main__":
    main()
