"""The import contracts in pyproject.toml hold, and they do catch what they are there to catch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--config", str(where / "pyproject.toml"), "--no-cache"],
        cwd=where,
        env={"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy(tmp_path: Path) -> Path:
    for pkg in ("broadcaster", "channels", "workers"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code + "\n")


def test_the_contracts_hold_on_the_code_as_it_is(tmp_path):
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_function_level_import_cycle_breaks_the_build(tmp_path):
    where = _copy(tmp_path)
    # dispatch imports failover at module level; failover importing dispatch back, even
    # inside a function, is the hidden cycle the layout removed.
    _append(
        where / "workers" / "failover.py",
        "def _sneaky() -> None:\n    from workers import dispatch  # noqa: F401",
    )
    result = _lint(where)
    assert result.returncode != 0
    assert "No import cycles inside a package, function-level imports included BROKEN" in result.stdout
    assert ".failover -> .dispatch" in result.stdout or ".dispatch -> .failover" in result.stdout


def test_io_in_the_core_and_workers_in_channels_break_the_build(tmp_path):
    where = _copy(tmp_path)
    core = where / "broadcaster" / "core" / "routing.py"
    _append(core, "def _io() -> None:\n    import redis  # noqa: F401")
    _append(where / "channels" / "rss.py", "def _up() -> None:\n    import workers.tasks  # noqa: F401")
    result = _lint(where)
    assert result.returncode != 0
    assert "The core is pure: no Redis, no network, no Celery BROKEN" in result.stdout
    assert "broadcaster.core.routing -> redis" in result.stdout
    assert "channels.rss -> workers.tasks" in result.stdout
