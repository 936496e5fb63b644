"""Real `keel` processes for tests: the CLI, and `keel serve` on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.multiprocess import MultiProcessCollector

# the developer's own configuration must not leak into a test's server
_OWN_VARIABLES = ("DATABASE_URL", "REDIS_URL")


def clean_env(extra: Mapping[str, str | None]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OWN_VARIABLES and not k.startswith("KEEL_")}
    env.update(
        {
            "KEEL_LOG_FORMAT": "json",
            "KEEL_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
            # tests of other features must never meet the limiter; rate-limit tests set their own
            "KEEL_RATE_LIMIT": "100000/s burst 100000",
            "KEEL_AUTH_RATE_LIMIT": "100000/s burst 100000",
        }
    )
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_keel(
    *args: str, env: Mapping[str, str | None], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel", *args],
        env=clean_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# this test process as a pytest-xdist worker (`make test` runs two): its name, gw<n>, and n; None and 0 without xdist
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
XDIST_INDEX = int(XDIST_WORKER.removeprefix("gw")) if XDIST_WORKER else 0


# xdist's workers each take ports from a range of their own, below the kernel's ephemeral range: a port one worker
# was handed may stay unbound for seconds, while its server starts, and the kernel, asked for port 0 by another
# worker meanwhile, would offer it again
def own_ports(index: int, workers: int) -> range:
    """The ports of xdist worker number `index` of `workers`, below Linux's ephemeral range (32768 and up)."""
    lowest, highest = 10_000, 32_000
    share = (highest - lowest) // workers
    return range(lowest + index * share, lowest + (index + 1) * share)


_OWN_PORTS = own_ports(XDIST_INDEX, int(os.environ["PYTEST_XDIST_WORKER_COUNT"])) if XDIST_WORKER else range(0)


def unused_port() -> int:
    """A loopback port nothing listens on now, released at once: the kernel's pick for port 0, or under pytest-xdist
    a random free one of this worker's range."""
    while True:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", random.choice(_OWN_PORTS) if XDIST_WORKER else 0))
            except OSError:
                continue  # in use: another pick
            port: int = sock.getsockname()[1]
            return port


_handed_out: set[int] = set()  # every port free_port returned in this process
_handing_out = threading.Lock()  # tests start servers from threads too


def free_port() -> int:
    """A free loopback port, never one this process handed out before: the kernel may offer a port again as soon as
    it is released, and a test that asked for two would then start two servers on one port."""
    with _handing_out:
        while (port := unused_port()) in _handed_out:
            pass  # a set lookup and one more bind: handing out stays as cheap as the bind
        _handed_out.add(port)
        return port


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def keel_serve(
    env: Mapping[str, str | None],
    cwd: Path,
    *args: str,
    ready_timeout: float = 60,
    port: int | None = None,
    command: Sequence[str] | None = None,
) -> Iterator[Server]:
    """`keel serve` on a free port (or `port`: a restart where clients expect it), ready when /healthz answers;
    stopped with SIGTERM afterwards. `command` runs instead (another server for keel's app), `{port}` filled in."""
    port = port or free_port()
    argv = (
        [part.replace("{port}", str(port)) for part in command]
        if command is not None
        else [sys.executable, "-m", "keel", "serve", "--port", str(port), *args]
    )
    log = cwd / f"server-{port}-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            argv,
            env=clean_env(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"keel serve exited with {process.returncode}:\n{server.output()}")
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"keel serve did not become ready:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def answered_by_worker(directory: Path, route: str) -> dict[str, float]:
    """Requests to `route` each worker counted, read from its own file (counter_<pid>.db) in the server's metrics
    `directory`."""
    counts: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        for family in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            for s in family.samples:
                if s.name == "http_requests_total" and s.labels["route"] == route:
                    counts[path.stem] = counts.get(path.stem, 0.0) + s.value
    return counts


def load_both_workers(url: str, directory: Path, route: str) -> int:
    """GET `route` from four connections side by side until both of the server's two workers have answered some;
    the requests sent. Fails if one worker answered all by the deadline."""

    def get(_: int) -> None:
        with httpx.Client(base_url=url) as client:  # one connection each, open side by side
            for _ in range(5):
                assert client.get(route).status_code == 200

    def answered() -> int:
        return len([n for n in answered_by_worker(directory, route).values() if n])

    # a worker still starting, or restarted by its supervisor on a loaded machine, or the kernel's choice, may leave
    # one idle for a while: a deadline, not a count
    sent, deadline = 0, time.monotonic() + 90
    with ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:
            list(pool.map(get, range(4)))
            sent += 20
            if answered() >= 2:
                break
    assert answered() >= 2, "one worker answered all"
    return sent


class RedisProcess:
    """A private redis-server on a loopback port, to stop and start again in outage tests."""

    def __init__(self, *options: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.options = options  # more of redis-server's command line, e.g. ("--enable-debug-command", "yes")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*argv, *self.options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"  # Debian's server binaries, one directory per major version


def postgres_bin() -> Path | None:
    """The bin directory of the newest PostgreSQL server Debian installed, if any."""
    found = sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/")), key=lambda path: int(path.parent.name))
    return found[-1] if found and (found[-1] / "initdb").exists() else None


class PostgresProcess:
    """A private PostgreSQL cluster (Debian's initdb and pg_ctl) on a loopback port, to stop and start in fault tests.

    initdb refuses to run as root: then the cluster's directory belongs to `postgres` and every command runs as it
    through runuser. fsync is off (a test's data need not survive the machine), synchronous_commit is not: a commit
    is in the WAL the server writes before it is acknowledged, so an immediate stop keeps every committed row.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="keel-pg-"))
        self.data = self.directory / "data"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/keel"
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_postgres:
            shutil.chown(self.directory, "postgres")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as_postgres, str(self.bin / tool), *args], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.directory / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "30", "start")

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash (no checkpoint; the next start recovers from the WAL), `fast` a clean stop."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def _processes(self) -> list[int]:
        """The postmaster (the first line of its pid file) and every process it started."""
        postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
        return [postmaster.pid, *(child.pid for child in postmaster.children(recursive=True))]

    def freeze(self) -> None:
        """Stop every server process (SIGSTOP): connections are accepted by the kernel and then nothing answers, as
        behind a network partition that drops packets."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    def __enter__(self) -> PostgresProcess:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.thaw()  # a frozen server would not stop
            self.stop()
        except (RuntimeError, OSError, psutil.Error):
            pass  # already stopped
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def scaled_env(pg_url: str, redis_url: str, **extra: str) -> dict[str, str | None]:
    """Settings for servers that share one emptied PostgreSQL and one flushed Redis, as instances of one service."""
    from tests.conftest import TEST_JWT_SECRET, empty_tables, flush  # conftest imports this module

    asyncio.run(empty_tables(pg_url))
    flush(redis_url)
    return {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "KEEL_JWT_SECRET": TEST_JWT_SECRET, **extra}


def sign_up(base_url: str, username: str = "ada", password: str = "correct horse battery") -> dict[str, str]:
    """Register `username` on a running server and log in: the token pair."""
    body = {"username": username, "email": f"{username}@example.com", "password": password}
    assert httpx.post(f"{base_url}/api/v1/users", json=body).status_code == 201
    response = httpx.post(f"{base_url}/api/v1/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


class TcpForwarder:
    """A loopback TCP port forwarded to another, started when a test wants a dependency to "come up" late."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        serve = asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.server = asyncio.run_coroutine_threadsafe(serve, self.loop).result(5)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.close)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            reader, writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))
