"""python -m services.testing_ui"""

from services.common.app import run_service
from services.testing_ui.app import create_app
from services.testing_ui.settings import Settings


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), settings)


if __name__ == "__main__":
    main()
