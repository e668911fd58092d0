"""Results: figures as medians and percentiles, a rich table on stdout, JSON in bench/results/."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from broadcaster.ops.embedded_redis import RedisUnavailable, find_server

RESULTS = Path(__file__).resolve().parent / "results"
console = Console()


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (p in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "min": min(values) if values else None,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "max": max(values) if values else None,
    }


def machine() -> dict[str, Any]:
    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        redis_version = subprocess.run(
            [find_server(), "--version"], capture_output=True, text=True, check=False
        ).stdout.split()[2]
    except (OSError, IndexError, RedisUnavailable):
        redis_version = "?"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": redis_version,
        "load_avg_at_start": load_avg(),
    }


def load_avg() -> list[float]:
    """The 1, 5 and 15 minute load averages now (the machine is shared: say how busy it was)."""
    return [round(x, 2) for x in os.getloadavg()]


def write(name: str, data: dict[str, Any]) -> Path:
    """bench/results/<name>.json (latest) and <name>-<timestamp>.json (kept)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    body = {
        "benchmark": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "machine": machine(),
    } | data
    text = json.dumps(body, indent=2, default=str)
    (RESULTS / f"{name}-{stamp}.json").write_text(text)
    latest = RESULTS / f"{name}.json"
    latest.write_text(text)
    console.print(f"[dim]wrote {latest}[/dim]")
    return latest


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c != columns[0] else "left")
    for row in rows:
        t.add_row(*[fmt(v) for v in row])
    console.print(t)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
