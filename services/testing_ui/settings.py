"""Settings of testing-ui (the only place its environment is read)."""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, service_env_files


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_file=service_env_files(__file__))

    service_name: ClassVar[str] = "testing-ui"

    port: int = Field(8080, ge=1, le=65535)
    """Port to listen on (compose: 8080:8080)."""

    orchestrator_primary_url: str = Field("http://127.0.0.1:8220", min_length=1)
    """orchestrator-enhanced, which serves every turn while it is up (local default: its compose host port)."""

    orchestrator_fallback_url: str | None = "http://127.0.0.1:8200"
    """The plain orchestrator, which serves a turn when the primary cannot (down, not ready, 5xx); the UI says
    so. Empty: no fallback."""

    voices_url: str | None = "http://127.0.0.1:7120"
    """tts-bark, whose GET /voices fills the voice list (Bark presets and Piper voices). Empty: no list."""

    turn_timeout_s: float = Field(300.0, gt=0, le=3600)
    """Longest wait for one turn (a long recording on 2 CPU cores takes minutes), in seconds."""

    ui_username: str | None = None
    """Login of the page (Gradio auth) together with ``UI_PASSWORD``. Empty: no login, which is only allowed
    while ``HOST`` is a loopback address."""

    ui_password: SecretStr | None = None
    """Password of the login; see ``UI_USERNAME``."""

    max_upload_mb: float = Field(200.0, gt=0, le=4096)
    """Largest file the page accepts, in MB. Larger recordings still reach the orchestrator up to this size,
    so its own limit (VOICE_MAX_UPLOAD_BYTES) and message are what a user sees."""

    @model_validator(mode="after")
    def _login_off_loopback(self) -> Settings:
        user = self.ui_username or ""
        password = self.ui_password.get_secret_value() if self.ui_password else ""
        if bool(user) != bool(password):
            raise ValueError("set both UI_USERNAME and UI_PASSWORD, or neither")
        if not user and not _is_loopback(self.host):
            raise ValueError(f"HOST={self.host} is reachable from other machines and the page sends the fleet's "
                             "token for whoever uses it: set UI_USERNAME and UI_PASSWORD (a login), or listen on "
                             "127.0.0.1")
        return self

    def login(self) -> tuple[str, str] | None:
        if self.ui_username and self.ui_password:
            return self.ui_username, self.ui_password.get_secret_value()
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
