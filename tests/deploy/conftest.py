"""The Debian programs the deployment tests drive (nginx, pgbouncer, psql): found, or the test skips (CI: fails)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import IN_CI

# Debian installs the daemons under /usr/sbin, which a non-root user's PATH may leave out
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def tool(name: str, package: str) -> str:
    """The path of `name`; if it is missing the test skips with the package to install, or fails under CI=true."""
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed; .ci/run installs Debian's {package}", pytrace=False)
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return path
