"""The ASGI entry point servers import: `keel.asgi:app` with factory=True builds the app from the environment."""

from __future__ import annotations

import gc
from typing import Final

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


# Allocations the youngest generation takes before a collection (CPython's default: 700). The objects of the
# requests in flight are most of what a young collection finds, and with tracing on 64 of them came to about the
# default: with every request traced, 1 225 young collections in 11 s of load, 1.8 % of the worker's CPU (199 ms with
# the older ones they set off), none at 7 000; without tracing, 5 (BENCHMARKS.md 2026-12-05 11:45). Garbage that
# only the collector frees (cycles) waits for at most this many allocations more: a few megabytes.
YOUNG_GENERATION: Final = 10_000


def freeze_startup_objects() -> None:
    """Keep the cyclic garbage collector off everything startup built, and off the requests in flight.

    A full collection walks every tracked object, and a started keel holds a few hundred thousand (routes,
    OpenAPI models, SQLAlchemy's and OpenTelemetry's machinery). Requests that leave objects alive set off
    collections: traced ones do (their spans wait in the export queue), and with every request traced the full
    collections cost ~18 µs per request on the 2-core development VM, as much as the spans themselves. Frozen,
    those objects are skipped (`gc.freeze`), and the youngest generation is collected after YOUNG_GENERATION
    allocations; a server worker, not a test process that builds many apps, does it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION, *gc.get_threshold()[1:])
