"""testing-ui: the Gradio page mounted on the common FastAPI app (/health/*, /metrics as everywhere)."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.app import Dependency, create_service_app
from services.testing_ui.client import FALLBACK, PRIMARY, FleetClient
from services.testing_ui.settings import Settings


def create_app(settings: Settings, client: FleetClient | None = None) -> FastAPI:
    import gradio as gr

    from services.testing_ui.ui import build_ui

    client = client or FleetClient(settings)
    deps = [Dependency(PRIMARY, settings.orchestrator_primary_url, required=False, path="/health/ready")]
    if settings.orchestrator_fallback_url:
        deps.append(Dependency(FALLBACK, settings.orchestrator_fallback_url, required=False, path="/health/ready"))
    # The page is for people (its own login, loopback by default), not for the fleet's bearer token.
    app = create_service_app(settings, dependencies=deps, title="testing-ui", fleet_auth=False)
    app.state.client = client
    return gr.mount_gradio_app(app, build_ui(client), path="", auth=settings.login(),
                               max_file_size=int(settings.max_upload_mb * 1024 * 1024), show_error=True)
