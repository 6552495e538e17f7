"""python -m services.guardrails"""

from services.common.app import run_service
from services.guardrails.app import create_app
from services.guardrails.settings import Settings


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), settings)


if __name__ == "__main__":
    main()
