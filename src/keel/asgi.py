"""The ASGI entry point servers import: `keel.asgi:app` with factory=True builds the app from the environment."""

from __future__ import annotations

from litestar import Litestar

from keel.logs import configure_logging
from keel.main import create_app
from keel.settings import load_settings


def app() -> Litestar:
    """Build the app in each server worker (the CLI validated the same settings before starting them)."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)
