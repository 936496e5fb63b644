"""The server entry point: the app a `keel serve` worker builds."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from keel import asgi


def test_a_server_worker_freezes_startup_and_collects_the_young_less_often(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env, and var/ here
    monkeypatch.setattr(asgi, "configure_logging", lambda *_: None)  # the test process keeps its logging
    application = asgi.app()
    assert application.on_startup[-1] is asgi.freeze_startup_objects  # after the lifespan opened everything
    threshold = gc.get_threshold()
    try:
        asgi.freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (asgi.YOUNG_GENERATION, *threshold[1:])  # the older generations as they were
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
