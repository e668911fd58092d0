"""The supervisor stops its children in two waves: the app processes together, then what they
depend on (`stops_last`, the embedded Redis). Real child processes; each logs the SIGTERM it
gets and holds on until the test releases it, so the order is proven, not timed."""

from __future__ import annotations

import io
import sys
import threading
import time
from pathlib import Path

from broadcaster.ops.supervisor import ChildSpec, Supervisor

CHILD = """
import signal, sys, time, pathlib
name, log, release = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
def note(what):
    with log.open("a") as f:
        f.write(f"{what} {name}\\n")
def on_term(*_):
    note("term")
    while not release.exists():
        time.sleep(0.02)
    note("exit")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
note("ready")
while True:
    time.sleep(1)
"""


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _wait(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_app_children_stop_together_and_redis_after_them(tmp_path: Path) -> None:
    script, log, release = tmp_path / "child.py", tmp_path / "log", tmp_path / "release"
    script.write_text(CHILD)
    sup = Supervisor(out=io.StringIO(), color=False)

    def spec(name: str, **kw: object) -> ChildSpec:
        return ChildSpec(name, [sys.executable, str(script), name, str(log), str(release)], **kw)  # type: ignore[arg-type]

    sup.start(spec("redis", stops_last=True))
    for name in ("worker", "beat", "api"):
        sup.start(spec(name))
    _wait(lambda: sum(line.startswith("ready") for line in _lines(log)) == 4, "four children")

    stopper = threading.Thread(target=sup.stop_all)
    stopper.start()
    # Every app child has its SIGTERM while none of them has exited: they stop together.
    _wait(lambda: {"term worker", "term beat", "term api"} <= set(_lines(log)), "three SIGTERMs")
    assert "term redis" not in _lines(log)
    assert not any(line.startswith("exit") for line in _lines(log))

    release.touch()
    stopper.join(60)
    assert not stopper.is_alive()
    lines = _lines(log)
    redis_term = lines.index("term redis")
    assert all(lines.index(f"exit {name}") < redis_term for name in ("worker", "beat", "api"))
    assert all(not child.alive() for child in sup.children)
