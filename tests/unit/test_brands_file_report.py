"""A broken brands file: the worker says so in one line per change of the file, never a traceback
per task (issue 15, item 17)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from celery import Celery

from broadcaster.core import brands
from broadcaster.core.brands import BrandsFileError
from broadcaster.core.settings import Settings
from workers import celery_app
from workers.runtime import Runtime

BROKEN = "brands: [\n  - id: acme\n   api_key: x\n"  # not YAML


def test_the_report_says_each_problem_once_per_change_of_the_file_and_the_recovery_once():
    report = brands.BrandsFileReport()
    assert report.line(None, None) is None  # fine, and it was fine
    first = report.line("b.yaml is not valid YAML: x", 100.0)
    assert first is not None
    assert first.startswith("b.yaml is not valid YAML: x")
    assert report.line("b.yaml is not valid YAML: x", 100.0) is None  # the next ticks: silent
    assert report.line("b.yaml is not valid YAML: x", 100.0) is None
    assert report.line("b.yaml is not valid YAML: y", 200.0) is not None  # edited, still broken
    assert report.line("b.yaml is not valid YAML: y", 300.0) is not None  # touched: said again
    assert report.line("b.yaml not found", None) is not None
    assert report.line(None, None) == "the brands file is readable again"
    assert report.line(None, None) is None


def _runtime(path: Path) -> Runtime:
    settings = Settings(_env_file=None, brands_file=path)
    return Runtime(settings=settings, redis=None, store=None)  # type: ignore[arg-type]


def test_the_worker_logs_one_line_per_change_of_a_broken_brands_file(tmp_path, caplog):
    path = tmp_path / "brands.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    rt = _runtime(path)
    caplog.set_level(logging.INFO, logger="broadcaster.worker")
    for _ in range(5):  # five ticks of the scheduler
        with pytest.raises(BrandsFileError):
            rt.brands()
    lines = [r for r in caplog.records if r.name == "broadcaster.worker"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert str(path) in lines[0].getMessage()
    assert "not valid YAML" in lines[0].getMessage()
    assert "\n" not in lines[0].getMessage()
    assert lines[0].exc_info is None  # no traceback

    path.write_text(BROKEN + "  oops\n", encoding="utf-8")
    os.utime(path, (1_000_000, 1_000_000))  # a new modification time, whatever the clock's grain
    for _ in range(3):
        with pytest.raises(BrandsFileError):
            rt.brands()
    assert len([r for r in caplog.records if r.name == "broadcaster.worker"]) == 2


def test_a_task_on_a_broken_brands_file_ends_without_a_traceback(caplog):
    app = Celery("quiet-test", task_cls=celery_app.QuietTask, set_as_current=False)

    @app.task(name="needs_brands")
    def needs_brands() -> str:
        raise BrandsFileError("brands.yaml is not valid YAML: x")

    caplog.set_level(logging.INFO)
    result = needs_brands.apply()
    assert result.successful()
    assert not [r for r in caplog.records if r.exc_info]


def test_up_prints_the_brands_error_instead_of_is_up(tmp_path):
    from broadcaster.ops.embedded_redis import RedisChoice
    from broadcaster.ops.up import Running, banner

    path = tmp_path / "brands.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    fine = Running(RedisChoice("redis://127.0.0.1:1/0", "embedded"), "http://api", None, "admin", "pw", {})
    assert banner(fine, path).splitlines()[0] == "Failover Broadcaster is up."
    problem = f"{path} is not valid YAML: while parsing a block mapping"
    broken = Running(fine.redis, "http://api", None, "admin", "pw", {}, brands_problem=problem)
    text = banner(broken, path)
    assert text.splitlines()[0] == f"error: {problem}"
    assert "is up" not in text
