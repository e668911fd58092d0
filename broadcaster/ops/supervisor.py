"""Run several child processes as one: prefixed logs, ordered clean shutdown, no orphans.

Each child gets its own process group, so a Ctrl-C in the terminal reaches only the
supervisor, which then stops the children itself, newest first (API and Flower before
the worker, Redis last): a Celery worker gets SIGTERM, its warm shutdown, so it finishes
its running tasks and puts late-acked ones back on the queue. A child that does not exit
in time gets SIGKILL, on its whole group, so no grandchild (a worker's pool process) is
left. On Linux each child also gets SIGTERM if the supervisor itself dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

COLORS = ("36", "33", "35", "32", "34", "31", "96", "93")
PR_SET_PDEATHSIG = 1


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    cwd: str | None = None
    stop_timeout: float = 15.0
    stop_signal: int = signal.SIGTERM
    # Stopped after every other child: the ones that talk to it (a worker's warm shutdown
    # acks and requeues through Redis) must be gone first.
    stops_last: bool = False


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen
    color: str
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    reader: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


class ChildExited(RuntimeError):
    """Raised when a child stops on its own while the supervisor still needs it."""

    def __init__(self, child: Child):
        self.child = child
        last = "\n".join(child.tail) or "(no output)"
        super().__init__(f"{child.name} exited with code {child.proc.returncode}; its last lines:\n{last}")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Start children, stream their output with a `name |` prefix, stop them all in order."""

    def __init__(self, out: IO[str] | None = None, color: bool | None = None, quiet: set[str] | None = None):
        self.out = out or sys.stdout
        self.color = self.out.isatty() if color is None else color
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self._write_lock = threading.Lock()
        self.quiet = quiet or set()  # children whose output is kept (for errors) but not shown
        self.width = 6

    # ---- output ------------------------------------------------------------------------------
    def say(self, text: str, name: str = "up", color: str = "1") -> None:
        prefix = f"{name:<{self.width}} |"
        if self.color:
            prefix = f"\033[{color}m{prefix}\033[0m"
        with self._write_lock:
            for line in text.splitlines() or [""]:
                self.out.write(f"{prefix} {line}\n")
            self.out.flush()

    def _pump(self, child: Child) -> None:
        stream = child.proc.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            child.tail.append(line)
            if child.name not in self.quiet:
                self.say(line, child.name, child.color)
        stream.close()

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, spec: ChildSpec) -> Child:
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        proc = subprocess.Popen(  # noqa: S603 - argv built by us, no shell
            spec.argv,
            env=spec.env,
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,  # only sets the parent-death signal
        )
        child = Child(spec, proc, COLORS[len(self.children) % len(COLORS)])
        self.width = max(self.width, len(spec.name))
        child.reader = threading.Thread(
            target=self._pump, args=(child,), name=f"log-{spec.name}", daemon=True
        )
        child.reader.start()
        self.children.append(child)
        return child

    def check_children(self) -> None:
        for child in self.children:
            if not child.alive():
                raise ChildExited(child)

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll `check` until truthy; a child dying meanwhile raises ChildExited at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stopping.is_set():
                raise KeyboardInterrupt
            self.check_children()
            result = check()
            if result:
                return result
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    def handle_signals(self) -> None:
        """SIGINT (Ctrl-C), SIGTERM and SIGHUP (terminal closed) ask for a clean stop; main thread only."""

        def on_signal(signum: int, _frame: object) -> None:
            self.stopping.set()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, on_signal)

    def run(self, tick: Callable[[], None] | None = None, interval: float = 0.5) -> int:
        """Block until a stop is asked (0) or a child exits on its own (1)."""
        while not self.stopping.wait(interval):
            try:
                self.check_children()
            except ChildExited as e:
                self.say(str(e), "up", "31")
                return 1
            if tick is not None:
                tick()
        return 0

    def _signal(self, child: Child) -> None:
        if child.alive():
            self.say(f"stopping {child.name} (pid {child.pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, child.spec.stop_signal)

    def _reap(self, child: Child, deadline: float) -> None:
        """Wait for a signalled child until `deadline`, then kill what is left of its group."""
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.say(f"{child.name} did not stop in {child.spec.stop_timeout:.0f}s; killing it", "up", "31")
        # Whatever is left in its group (pool processes of a killed worker) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(5)
        if child.reader is not None:
            child.reader.join(2)

    def stop_child(self, child: Child) -> None:
        self._signal(child)
        self._reap(child, time.monotonic() + child.spec.stop_timeout)

    def stop_all(self) -> None:
        """Stop the children in two waves: everything but the `stops_last` ones together (each
        within its own stop timeout; one slow warm shutdown no longer delays the others in turn),
        then those, newest first."""
        first = [c for c in reversed(self.children) if not c.spec.stops_last]
        started = time.monotonic()
        for child in first:
            self._signal(child)
        for child in first:
            self._reap(child, started + child.spec.stop_timeout)
        for child in reversed(self.children):
            if child.spec.stops_last:
                self.stop_child(child)
