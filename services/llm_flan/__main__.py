"""python -m services.llm_flan"""

from services.common.app import run_service
from services.llm_flan.app import create_app
from services.llm_flan.settings import Settings


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), settings)


if __name__ == "__main__":
    main()
