"""deploy/compose.yaml, checked as well as can be without Docker: the Compose Specification's own JSON Schema, then the
references between its parts (services, files, addresses) that no schema can see.

compose-spec.json is schema/compose-spec.json of the compose-spec/compose-spec repository at commit 170098ba07d9
(Apache-2.0), the schema Docker Compose itself validates against.
"""

from __future__ import annotations

import json
import re
import subprocess
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from keel.cli import GRACEFUL_SHUTDOWN
from keel.realtime.hub import DRAIN_TIMEOUT
from tests.deploy.conftest import tool

DEPLOY = Path(__file__).parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
# Compose's interpolation: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}")
ENV = {"KEEL_JWT_SECRET": "a-secret-that-is-at-least-32-bytes-long", "KEEL_SMTP_URL": "smtp://smtp.example.com:587"}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """What `docker compose config` does to every string before validating: ${...} replaced from `env`."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        present = env.get(name) if operator is None or ":" not in operator else env.get(name) or None
        if present is not None:
            return present
        if operator is not None and operator.endswith("?"):
            raise ValueError(f"{name}: {argument}")
        return argument or ""

    return _VARIABLE.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = interpolate(yaml.safe_load(COMPOSE.read_text()), ENV)
    return document


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(compose)


def test_compose_refuses_to_start_without_a_jwt_secret() -> None:
    with pytest.raises(ValueError, match="KEEL_JWT_SECRET"):
        interpolate(yaml.safe_load(COMPOSE.read_text()), {})


def test_compose_runs_replicas_behind_nginx_with_their_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"nginx", "keel", "migrate", "postgres", "redis", "otel-collector", "prometheus"} <= set(services)
    assert services["keel"]["deploy"]["replicas"] >= 2
    assert [service for service, spec in services.items() if "ports" in spec] == ["nginx", "prometheus"]
    for name, spec in services.items():
        for dependency in spec.get("depends_on", {}):
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
        for network in spec.get("networks", []):
            assert network in compose["networks"], f"{name} joins an undeclared network {network}"
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name} mounts a missing file {source}"
            else:
                assert source in compose["volumes"], f"{name} uses an undeclared volume {source}"
        if "build" in spec:
            context = DEPLOY / spec["build"]["context"]
            assert (context / spec["build"]["dockerfile"]).is_file()
    assert services["migrate"]["command"] == ["migrate"]
    assert services["keel"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    # `docker compose stop` lets keel drain (its own drain, then uvicorn's wait) before it kills a replica
    assert int(services["keel"]["stop_grace_period"].removesuffix("s")) > DRAIN_TIMEOUT + GRACEFUL_SHUTDOWN


def test_http_replicas_run_granian_and_realtime_ones_uvicorn_with_one_configuration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["keel"]["command"] == ["serve", "--server", "granian"]
    assert services["keel-realtime"]["command"] == ["serve", "--server", "uvicorn"]
    assert services["keel-realtime"]["environment"] == services["keel"]["environment"]
    assert services["keel-realtime"]["stop_grace_period"] == services["keel"]["stop_grace_period"]
    assert services["nginx"]["depends_on"]["keel-realtime"] == {"condition": "service_healthy"}


def test_keel_trusts_exactly_the_nginx_hop(compose: dict[str, Any]) -> None:
    services = compose["services"]
    nginx_address = services["nginx"]["networks"]["internal"]["ipv4_address"]
    [subnet] = compose["networks"]["internal"]["ipam"]["config"]
    assert ip_address(nginx_address) in ip_network(subnet["subnet"])
    keel = services["keel"]["environment"]
    assert keel["KEEL_TRUSTED_PROXIES"] == f"{nginx_address}/32"
    assert keel["KEEL_PROXY_HEADER"] == "X-Forwarded-For"  # the header deploy/nginx.conf appends to


def test_nginx_gets_every_placeholder_of_its_template(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    template = (DEPLOY / "nginx.conf").read_text()
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", template))
    assert placeholders
    assert placeholders <= set(nginx["environment"])
    assert nginx["environment"]["KEEL_UPSTREAM_SERVERS"] == "server keel:3000;"  # the image's KEEL_PORT
    assert nginx["environment"]["KEEL_REALTIME_SERVERS"] == "server keel-realtime:3000;"
    assert "./nginx.conf:/etc/nginx/templates/nginx.conf.template:ro" in nginx["volumes"]


def test_traces_and_metrics_go_to_the_services_that_take_them(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["keel"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    collector = yaml.safe_load((DEPLOY / "observability" / "otel-collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    prometheus = DEPLOY / "observability" / "prometheus-compose.yml"
    [job] = yaml.safe_load(prometheus.read_text())["scrape_configs"]
    [sd] = job["dns_sd_configs"]
    assert sd == {"names": ["keel", "keel-realtime"], "type": "A", "port": 3000, "refresh_interval": "30s"}
    checked = subprocess.run(
        [tool("promtool", "prometheus"), "check", "config", str(prometheus)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
