"""The ASGI entry point servers import: `keel.asgi:app` with factory=True builds the app from the environment."""

from __future__ import annotations

import gc

from litestar import Litestar

from keel.logs import configure_logging
from keel.main import create_app
from keel.settings import load_settings


def app() -> Litestar:
    """Build the app in each server worker (the CLI validated the same settings before starting them)."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    application = create_app(settings)
    application.on_startup.append(freeze_startup_objects)  # after the lifespan has opened everything
    return application


def freeze_startup_objects() -> None:
    """Keep the cyclic garbage collector off everything startup built: it lives as long as the process anyway.

    A full collection walks every tracked object, and a started keel holds a few hundred thousand (routes,
    OpenAPI models, SQLAlchemy's and OpenTelemetry's machinery). Requests that leave objects alive set off
    collections: traced ones do (their spans wait in the export queue), and with every request traced the full
    collections cost ~18 µs per request on the 2-core development VM, as much as the spans themselves. Frozen,
    those objects are skipped (`gc.freeze`); a server worker, not a test process that builds many apps, does it.
    """
    gc.collect()
    gc.freeze()
