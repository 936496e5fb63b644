"""The server entry point: the app a `keel serve` worker builds."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from keel import asgi


def test_a_server_worker_freezes_what_startup_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env, and var/ here
    monkeypatch.setattr(asgi, "configure_logging", lambda *_: None)  # the test process keeps its logging
    application = asgi.app()
    assert application.on_startup[-1] is asgi.freeze_startup_objects  # after the lifespan opened everything
    try:
        asgi.freeze_startup_objects()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
