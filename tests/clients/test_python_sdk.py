"""The Python SDK end to end: installed with pip into a fresh venv, driven by tests/clients/sdk_flow.py against
real `keel serve` processes, across a restart of the server its realtime followers are connected to."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from tests.conftest import TEST_JWT_SECRET, Backend
from tests.servers import free_port, keel_serve

SDK = Path(__file__).resolve().parents[2] / "clients" / "python"
FLOW = Path(__file__).with_name("sdk_flow.py")
READY = 60  # seconds for `keel serve` to answer /healthz: a loaded CI machine can take longer than the usual 20


@pytest.fixture(scope="session")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a new venv with `pip install clients/python` and nothing else: no keel, no test code."""
    venv = tmp_path_factory.mktemp("sdk") / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", SDK], capture_output=True, text=True, timeout=240, check=False
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


class Flow:
    """sdk_flow.py running: it names each step it needs from the test on a line of its own."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def expect(self, line: str) -> None:
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == line, "sdk_flow.py failed: see its log"

    def done(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("done\n")
        self.process.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        output = self.process.stdout.readline()
        assert self.process.wait(timeout=60) == 0, "sdk_flow.py failed: see its log"
        result: dict[str, Any] = json.loads(output)
        return result


@contextmanager
def sdk_flow(python: Path, url_a: str, url_b: str, log: IO[str]) -> Iterator[Flow]:
    command: list[str | Path] = [python, FLOW, url_a, url_b]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True) as process:
        try:
            yield Flow(process)
        finally:
            if process.poll() is None:
                process.kill()


@pytest.fixture
def flow_log(tmp_path: Path) -> Iterator[IO[str]]:
    """sdk_flow.py's stderr, shown when the test fails."""
    path = tmp_path / "sdk_flow.log"
    with path.open("w") as log:
        yield log
    print(path.read_text())


@pytest.mark.timeout(420)
def test_sdk_follows_a_channel_across_a_server_restart(
    sdk_python: Path, backend: Backend, tmp_path: Path, flow_log: IO[str]
) -> None:
    env = {"DATABASE_URL": backend.database_url, "REDIS_URL": backend.redis_url, "KEEL_JWT_SECRET": TEST_JWT_SECRET}
    port_a = free_port()
    with (
        keel_serve(env, tmp_path, ready_timeout=READY) as b,
        sdk_flow(sdk_python, f"http://127.0.0.1:{port_a}", b.url, flow_log) as flow,
    ):
        flow.expect("start-a")
        with keel_serve(env, tmp_path, port=port_a, ready_timeout=READY):
            flow.done()
            flow.expect("stop-a")
        flow.done()  # A is down: the followers' sockets and stream are gone, and B takes three posts
        flow.expect("start-a")
        with keel_serve(env, tmp_path, port=port_a, ready_timeout=READY):
            flow.done()
            result = flow.result()

    assert result["v1_list"] == [2, 1]
    assert result["v2_pages"] == [[2], [1], None]
    assert result["posted_while_down"] == [3, 4, 5]
    assert result["posted_live"] == 6
    # every message once and in order on every follower: the ones posted while it was cut off came on resume
    assert result["received"] == {name: [1, 2, 3, 4, 5, 6] for name in ("ws", "ws_ticket", "sse")}
    # what retrying cannot mend ends the iteration at once
    assert result["refusals"] == {
        "ws_unknown_channel": {"error": "SubscribeFailed", "status": None, "code": "not_found"},
        "sse_unknown_channel": {"error": "Refused", "status": 404, "code": None},
        "ws_bad_token": {"error": "Refused", "status": 401, "code": None},
    }
    assert all(count >= 1 for count in result["reconnects"].values()), result["reconnects"]
    # a logout is not retried: the sockets close with 4401, the stream's next connection is refused with 401
    assert result["ended"] == {
        "ws": {"error": "Closed", "status": None, "code": 4401},
        "ws_ticket": {"error": "Closed", "status": None, "code": 4401},
        "sse": {"error": "Refused", "status": 401, "code": None},
    }
    assert result["after_end"] == {"ws": 0, "ws_ticket": 0, "sse": 0}
