"""Unit tests are pure: none of them reads the deployment's environment.

In a whole-suite run the integration stack puts its BROADCASTER_* settings into this process's
environment; `Settings()` in a unit test must see the defaults, not those.
"""

from __future__ import annotations

import os

import pytest

from broadcaster.core.settings import reset_settings_cache


@pytest.fixture(autouse=True)
def _no_deployment_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith("BROADCASTER_")]:
        monkeypatch.delenv(name)
    reset_settings_cache()
    yield
    reset_settings_cache()  # a later integration test in this process reads its own environment
