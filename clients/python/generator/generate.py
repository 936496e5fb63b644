"""Regenerate clients/python/keel_client from the OpenAPI document keel serves (`make clients-python`).

`keel openapi` writes the document (what `/api-docs/openapi.json` serves) from a clean environment, so the
developer's `.env` or `KEEL_*` variables cannot change it; openapi-python-client (pinned in uv.lock, as is the
ruff its post hooks run) turns it into the package. The result is the same on every machine, which is what lets
tests/clients/test_python_sdk_generated.py compare a fresh generation with the committed tree.

`--output DIR` writes `DIR/keel_client` instead of replacing the committed package.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "keel_client"
COMMITTED = HERE.parent / PACKAGE
BIN = Path(sys.executable).parent

# Upstream issue #1451 (fix proposed in PR #1478): a `{% set %}` inside a for loop does not outlive it, so a
# required body of several content types (/auth/token and /auth/session take a form or JSON) is typed
# `... | Unset = UNSET` without `Unset` imported, and the module fails to import. A namespace carries the value
# out of the loop. When openapi-python-client changes this template, MACROS_BUG is no longer found and
# generation stops: drop the patch if the release has the fix, or adapt it.
MACROS = "endpoint_macros.py.jinja"
MACROS_BUG = """body:
    {%- for body in endpoint.bodies -%}{% set body_required = body_required and body.prop.required %}
    {{ body.prop.get_type_string(no_optional=True) | as_unembedded_code }} {% if not loop.last %} | {% endif %}
    {%- endfor -%}{% if not body_required %} | Unset = UNSET{% endif %}
"""
MACROS_FIX = """{% set bodies = namespace(required=true) %}
body:
    {%- for body in endpoint.bodies -%}{% set bodies.required = bodies.required and body.prop.required %}
    {{ body.prop.get_type_string(no_optional=True) | as_unembedded_code }} {% if not loop.last %} | {% endif %}
    {%- endfor -%}{% if not bodies.required %} | Unset = UNSET{% endif %}
"""


def export_document(workdir: Path) -> Path:
    """The OpenAPI document, written by `keel openapi` in an empty directory with no keel variables set."""
    path = workdir / "openapi.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_") and k not in ("DATABASE_URL", "REDIS_URL")}
    subprocess.run([BIN / "keel", "openapi", "-o", path], cwd=workdir, env=env, check=True)
    return path


def patched_templates(workdir: Path) -> Path:
    """A custom template directory holding the upstream macros with the #1451 fix; every other template is
    openapi-python-client's own."""
    upstream = (importlib.resources.files("openapi_python_client") / "templates" / MACROS).read_text()
    if upstream.count(MACROS_BUG) != 1:
        sys.exit(f"openapi-python-client's {MACROS} changed: see MACROS_BUG in {__file__}")
    templates = workdir / "templates"
    templates.mkdir()
    (templates / MACROS).write_text(upstream.replace(MACROS_BUG, MACROS_FIX))
    return templates


def generate(output: Path) -> Path:
    """Generate the package into `output / keel_client` and return that path."""
    target = output / PACKAGE
    with tempfile.TemporaryDirectory(prefix="keel-client-") as tmp:
        workdir = Path(tmp)
        command: list[str | Path] = [
            BIN / "openapi-python-client",
            "generate",
            "--path",
            export_document(workdir),
            "--meta",
            "none",
            "--config",
            HERE / "config.yaml",
            "--custom-template-path",
            patched_templates(workdir),
            "--output-path",
            target,
            "--overwrite",
        ]
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # the post hooks' ruff
        subprocess.run(command, env=env, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write DIR/keel_client instead of replacing the committed one")
    args = parser.parse_args()
    if args.output is not None:
        generate(args.output)
        return
    with tempfile.TemporaryDirectory(prefix="keel-client-") as tmp:
        fresh = generate(Path(tmp))
        shutil.rmtree(COMMITTED, ignore_errors=True)
        shutil.copytree(fresh, COMMITTED)


if __name__ == "__main__":
    main()
