"""The shared-state fixtures: limiter tests run on both backends, like the other shared-state tests."""

from __future__ import annotations

from tests.shared.conftest import backends, backends_url, open_instance, redis_admin  # noqa: F401
