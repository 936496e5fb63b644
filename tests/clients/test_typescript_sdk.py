"""The TypeScript SDK in clients/typescript: the committed generated code matches what keel serves, it type-checks,
and a Node script uses it end to end against `keel serve`, its realtime helpers resuming across a restart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.conftest import IN_CI, Backend
from tests.realtime.conftest import backend_env
from tests.servers import free_port, keel_serve, run_keel

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "typescript"
TOOLS = CLIENT / "node_modules" / ".bin"


def node_tool(name: str) -> str:
    """A tool of the SDK's toolchain: `node`, or one from the npm ci that `make test` runs first."""
    path = shutil.which("node") if name == "node" else str(TOOLS / name) if (TOOLS / name).exists() else None
    if path is None:
        reason = f"{name} not found; `make test` installs the SDK's tools (npm ci --prefix clients/typescript)"
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=CLIENT, env=env, capture_output=True, text=True, timeout=120, check=False)


def tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_the_committed_client_is_generated_from_the_served_document(tmp_path: Path) -> None:
    generator = node_tool("openapi-ts")
    document = tmp_path / "openapi.json"
    exported = run_keel("openapi", "-o", str(document), env={}, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    fresh = tmp_path / "generated"
    env = {**os.environ, "OPENAPI_FILE": str(document), "OUTPUT_DIR": str(fresh)}
    generated = run(generator, "--silent", env=env)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    committed = tree(CLIENT / "src" / "generated")
    regenerated = tree(fresh)
    assert committed.keys() == regenerated.keys(), "stale: run `make clients-typescript` and commit the result"
    stale = sorted(name for name in committed if committed[name] != regenerated[name])
    assert not stale, f"stale: {stale}; run `make clients-typescript` and commit the result"


def test_the_sdk_and_the_end_to_end_script_type_check() -> None:
    checked = run(node_tool("tsc"), "--noEmit", "-p", ".")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture(scope="module")
def dist() -> Path:
    """The SDK and its test scripts, built with tsc into clients/typescript/dist."""
    built = run(node_tool("tsc"), "-p", ".")
    assert built.returncode == 0, built.stdout + built.stderr
    return CLIENT / "dist"


def test_the_realtime_helpers_retry_resume_and_drop_repeats(dist: Path) -> None:
    tested = run(node_tool("node"), "--test", str(dist / "test" / "helpers.test.js"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


class Script:
    """The Node process: JSON events on its stdout, a line of input on its stdin."""

    def __init__(self, process: subprocess.Popen[str], errors: Path) -> None:
        self.process = process
        self.errors = errors

    def event(self, name: str) -> dict[str, Any]:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            self.process.wait(timeout=10)
            pytest.fail(f"the script exited with {self.process.returncode}:\n{self.errors.read_text()}")
        event: dict[str, Any] = json.loads(line)
        assert event["event"] == name, event
        return event

    def tell(self, line: str) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()


@pytest.fixture
def start_script(dist: Path, tmp_path: Path) -> Iterator[Any]:
    processes: list[subprocess.Popen[str]] = []

    def start(base_url: str) -> Script:
        errors = tmp_path / "node-stderr.log"
        with errors.open("w") as stderr:
            process = subprocess.Popen(
                [node_tool("node"), str(dist / "test" / "e2e.js"), base_url],
                cwd=CLIENT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        processes.append(process)
        return Script(process, errors)

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


def test_the_sdk_works_end_to_end_and_its_helpers_resume_across_a_restart(
    backend: Backend, tmp_path: Path, start_script: Any
) -> None:
    env = backend_env(backend)
    port = free_port()
    with keel_serve(env, tmp_path, port=port, ready_timeout=60) as server:
        script: Script = start_script(server.url)
        rest = script.event("rest")
        ready = script.event("ready")
    assert rest == {
        "event": "rest",
        "user": "ts_sdk",
        "me": True,
        "v1": [3, 2, 1],
        "v2": [[3, 2], [1]],
        "last_cursor": None,
    }

    # the script's server is down: messages posted through another instance on the same database meanwhile
    auth = {"Authorization": f"Bearer {ready['access_token']}"}
    with keel_serve(env, tmp_path, ready_timeout=60) as elsewhere:
        for body in ("five", "six", "seven"):
            url = f"{elsewhere.url}/api/v1/channels/{ready['channel']}/messages"
            assert httpx.post(url, json={"body": body}, headers=auth).status_code == 201
    time.sleep(0.5)  # the helpers keep trying the dead port, not only once it is back

    with keel_serve(env, tmp_path, port=port, ready_timeout=60):
        script.tell("7")
        done = script.event("done")

    # every message once and in order (5-7 only through the resume: they were posted before the reconnect),
    # then a refusal (the session logged out) that is not retried. A helper may also reconnect to the server
    # while it drains, so it opens at least twice.
    for transport in ("ws", "sse"):
        received = done[transport]
        assert received["seqs"] == list(range(1, 9)), received
        assert received["opens"] >= 2, received
        assert len(received["retries"]) >= 2, received
        assert received["ended"]["code"] == 4401, transport
        assert received["positions"] == {ready["channel"]: 8}, transport
