"""`make cluster`: the nginx deployment shape on this machine, without Docker.

Debian's nginx runs deploy/nginx.conf, rendered for loopback, in the foreground with its own prefix under
var/cluster/ (never the system service), in front of `keel serve` processes on one PostgreSQL and one Redis: by
default two on Granian for HTTP and one on uvicorn for /ws and /events (the realtime pool), fanning out through Redis.
keel trusts exactly the nginx hop: nginx connects from 127.0.0.1, so that is the one trusted proxy. Ctrl-C (or
SIGTERM) stops nginx, then lets every keel drain. The tests drive the same code through `cluster()`.

    python deploy/cluster.py [--instances 2] [--realtime-instances 1] [--port 8080] [--first-keel-port 3001]

DATABASE_URL and REDIS_URL come from the environment, defaulting to PostgreSQL and Redis on this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf")
DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/keel"
REDIS_URL = "redis://127.0.0.1:6379/0"
NGINX_ADDRESS = "127.0.0.1"  # nginx reaches keel from here: the one proxy keel trusts
_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")
_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])  # Debian puts nginx here
# a keel's start on a loaded 2-core host: three starting at once beside a test suite took 32-42 s (CI, 2026-12-05)
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0  # keel drains for up to 5 s, then uvicorn waits up to 10 s for open connections


def _servers(addresses: Sequence[str]) -> str:
    return " ".join(f"server {address};" for address in addresses)


def render(template: str, *, listen: str, upstreams: Sequence[str], realtime: Sequence[str] = ()) -> str:
    """deploy/nginx.conf with its placeholders filled in; an unknown or missing one is an error, not a blank.
    Without `realtime` addresses, /ws and /events go to `upstreams` too."""
    values = {
        "NGINX_LISTEN": listen,
        "KEEL_UPSTREAM_SERVERS": _servers(upstreams),
        "KEEL_REALTIME_SERVERS": _servers(realtime or upstreams),
    }

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise ValueError(f"{TEMPLATE.name} has an unknown placeholder {match.group(0)}")
        return values[match.group(1)]

    return _PLACEHOLDER.sub(fill, template)


@dataclass(frozen=True)
class Cluster:
    url: str  # nginx: what clients use
    instances: tuple[str, ...]  # each keel of the HTTP pool directly: what Prometheus would scrape
    realtime: tuple[str, ...]  # each keel of the realtime pool (/ws, /events); empty when `instances` serve them
    logs: Path  # nginx.log (its access log names the instance that answered) and keel-<port>.log
    processes: Mapping[str, subprocess.Popen[bytes]]  # by the name of their log: nginx, keel-<port>

    def exited(self) -> str | None:
        """A line naming a process that has stopped by itself, if any has."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                return f"{name} exited with {process.returncode}: see {self.logs / name}.log"
        return None


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:  # noqa: S310 (our own http URL)
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{log.name}: {url}/healthz did not answer within {READY_TIMEOUT:.0f} s")
        time.sleep(0.1)


def _start(command: Sequence[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """A child in its own session: a Ctrl-C reaches only this script, which stops the children in order."""
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True)


def _stop(processes: Sequence[subprocess.Popen[bytes]], stop: signal.Signals) -> None:
    """Signal them all, then wait for them all (keel's drains run side by side)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(stop)
    for process in processes:
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _nginx_command(nginx: str, prefix: Path) -> list[str]:
    directives = "daemon off;"
    if os.geteuid() == 0:
        # as root, workers would run as nobody, who cannot enter a prefix under root's private directories (pytest's
        # tmp); a local tool, so they keep root's user
        directives += " user root;"
    return [nginx, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", "stderr", "-g", directives]


@contextmanager
def cluster(
    directory: Path,
    *,
    env: Mapping[str, str],
    port: int,
    keel_ports: Sequence[int],
    realtime_ports: Sequence[int] = (),
    keel: Sequence[str] = (sys.executable, "-m", "keel"),
    serve: Sequence[str] = (),
) -> Iterator[Cluster]:
    """Migrate, start one `keel serve` per port and nginx on `port` in front of them; stop them all on exit.

    With `realtime_ports`, the `keel_ports` instances run on Granian and take everything but /ws and /events, which
    go to the `realtime_ports` instances on uvicorn; without, the `keel_ports` instances serve everything on uvicorn.
    `env` is every keel's environment (DATABASE_URL, REDIS_URL, ...); the trusted proxy is set here, as nginx's
    address. `serve` is more options for each `keel serve` (`--workers 2`). State (nginx's prefix, every log) goes
    under `directory`.
    """
    nginx = shutil.which("nginx", path=_SBIN)
    if nginx is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx)")
    prefix, logs = directory.resolve() / "nginx", directory.resolve() / "logs"
    prefix.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    keel_env = {**env, "KEEL_TRUSTED_PROXIES": f"{NGINX_ADDRESS}/32", "KEEL_PROXY_HEADER": "X-Forwarded-For"}
    migrated = subprocess.run([*keel, "migrate"], env=keel_env, capture_output=True, text=True, check=False)
    if migrated.returncode != 0:
        raise RuntimeError(f"keel migrate failed:\n{migrated.stderr}")
    upstreams = [f"127.0.0.1:{keel_port}" for keel_port in keel_ports]
    realtime = [f"127.0.0.1:{keel_port}" for keel_port in realtime_ports]
    (prefix / "nginx.conf").write_text(
        render(TEMPLATE.read_text(), listen=f"127.0.0.1:{port}", upstreams=upstreams, realtime=realtime)
    )
    nginx_log = logs / "nginx.log"
    proxy = _start(_nginx_command(nginx, prefix), nginx_log, os.environ)
    http_server = "granian" if realtime_ports else "uvicorn"
    roles = [(p, http_server) for p in keel_ports] + [(p, "uvicorn") for p in realtime_ports]
    keels: list[subprocess.Popen[bytes]] = []
    try:
        for keel_port, server in roles:
            command = [*keel, "serve", "--host", "127.0.0.1", "--port", str(keel_port), "--server", server, *serve]
            keels.append(_start(command, logs / f"keel-{keel_port}.log", keel_env))
        for (keel_port, _), process in zip(roles, keels, strict=True):
            _wait_ready(f"http://127.0.0.1:{keel_port}", process, logs / f"keel-{keel_port}.log")
        _wait_ready(f"http://127.0.0.1:{port}", proxy, nginx_log)
        processes = {"nginx": proxy, **{f"keel-{p}": process for (p, _), process in zip(roles, keels, strict=True)}}
        yield Cluster(
            f"http://127.0.0.1:{port}",
            tuple(f"http://{address}" for address in upstreams),
            tuple(f"http://{address}" for address in realtime),
            logs,
            processes,
        )
    finally:
        # keel first: its sockets close with 1001 and in-flight requests finish, while nginx answers newcomers 503
        _stop(keels, signal.SIGTERM)
        _stop([proxy], signal.SIGQUIT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=2, help="keel processes on Granian for HTTP (default 2)")
    parser.add_argument(
        "--realtime-instances",
        type=int,
        default=1,
        help="keel processes on uvicorn for /ws and /events (default 1; 0: the HTTP ones serve them, on uvicorn)",
    )
    parser.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1 (default 8080)")
    parser.add_argument("--first-keel-port", type=int, default=3001, help="the first keel's port (default 3001)")
    options = parser.parse_args()
    env = {
        **os.environ,
        "DATABASE_URL": os.environ.get("DATABASE_URL", DATABASE_URL),
        "REDIS_URL": os.environ.get("REDIS_URL", REDIS_URL),
    }
    ports = [options.first_keel_port + i for i in range(options.instances + options.realtime_instances)]
    # Ctrl-C and SIGTERM unwind `cluster()`, which stops the children (set for SIGINT too: a shell starts a background
    # job with SIGINT ignored)
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda *_: sys.exit(0))
    directory = Path("var/cluster")
    try:
        http, realtime = ports[: options.instances], ports[options.instances :]
        with cluster(directory, env=env, port=options.port, keel_ports=http, realtime_ports=realtime) as running:
            print(f"cluster: nginx on {running.url} in front of {', '.join(running.instances)} (HTTP, Granian)")
            if running.realtime:
                print(f"cluster: /ws and /events to {', '.join(running.realtime)} (uvicorn)")
            print(f"cluster: logs in {running.logs}/; Ctrl-C stops it all")
            while (exited := running.exited()) is None:
                time.sleep(1)
            sys.exit(f"cluster: {exited}")
    except RuntimeError as exc:
        sys.exit(f"cluster: {exc}")


if __name__ == "__main__":
    main()
