"""python -m services.orchestrator_enhanced (ENABLE_LANGCHAIN=false: the plain orchestrator)"""

from services.common.app import run_service
from services.orchestrator_enhanced.app import create_app
from services.orchestrator_enhanced.settings import Settings


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), settings)


if __name__ == "__main__":
    main()
