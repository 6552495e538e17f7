"""python -m services.llm"""

from services.common.app import run_service
from services.llm.app import create_app
from services.llm.settings import Settings


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), settings)


if __name__ == "__main__":
    main()
