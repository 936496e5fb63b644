"""The committed Python client is what `make clients-python` generates from today's OpenAPI document."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"
GENERATE = CLIENT / "generator" / "generate.py"


def files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.mark.timeout(300)
def test_committed_python_client_is_current(tmp_path: Path) -> None:
    generation = subprocess.run(
        [sys.executable, GENERATE, "--output", tmp_path], capture_output=True, text=True, timeout=280, check=False
    )
    assert generation.returncode == 0, generation.stdout + generation.stderr
    fresh, committed = files(tmp_path / "keel_client"), files(CLIENT / "keel_client")
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert stale == [], "clients/python/keel_client is stale: run `make clients-python` and commit the result"
