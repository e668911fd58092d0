"""In production, the settings refuse what only works on a developer's machine, and the
repository never commits an operator's `.env`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from broadcaster.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
REAL_KEY = "a-real-admin-key-0123456789"


@pytest.mark.parametrize(
    "url",
    [None, "http://127.0.0.1:8000", "http://localhost:8000/", "http://[::1]:8000", "http://0.0.0.0:8000"],
)
def test_production_refuses_a_public_base_url_on_this_machine_naming_the_setting(url):
    given = {} if url is None else {"public_base_url": url}
    with pytest.raises(ValidationError, match="BROADCASTER_PUBLIC_BASE_URL"):
        Settings(_env_file=None, environment="production", admin_api_key=REAL_KEY, **given)


def test_production_takes_a_real_public_base_url_and_development_keeps_the_default():
    s = Settings(
        _env_file=None, environment="production", admin_api_key=REAL_KEY, public_base_url="https://b.example"
    )
    assert s.public_base_url == "https://b.example"
    assert Settings(_env_file=None).public_base_url == "http://127.0.0.1:8000"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_an_operators_env_file_is_ignored_by_git():
    assert subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode == 0
    assert subprocess.run(["git", "check-ignore", "-q", "config/.env.example"], cwd=ROOT).returncode == 1
