"""`python -m bench <name> [--smoke] [options]`: run one benchmark (or `all`), print, save JSON."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from bench import report

# name -> (module, full-size options, smoke options: a tiny run that still exercises everything)
BENCHMARKS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "failover_reaction": (
        "bench.failover_reaction",
        {"trials": 10},
        {"trials": 2, "profiles": ("smoke",), "post_every_s": 0.5, "warmup_s": 2.0},
    ),
    "throughput": (
        "bench.throughput",
        {},
        {"workers": (1,), "posts": 10, "repeats": 1, "apprise_messages": 4},
    ),
    "api_latency": (
        "bench.api_latency",
        {},
        {"rates": (50,), "duration_s": 1.5, "repeats": 1, "other_events": 2_000, "polls": 20},
    ),
    "backlog": ("bench.backlog", {}, {"posts": 40, "brands": 2, "lead_s": 2.0, "repeats": 1}),
    "memory": ("bench.memory", {}, {"posts": 30, "deliveries": 40, "checkpoints": 2}),
    "telegram_cpu": (
        "bench.telegram_cpu",
        {},
        {"sends": 40, "threads": 4, "rounds": 1, "warmup": 8},
    ),
}


def parse_value(text: str) -> Any:
    if "," in text:
        return tuple(parse_value(t) for t in text.split(",") if t)
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run_one(name: str, smoke: bool, overrides: dict[str, Any]) -> dict[str, Any]:
    module, full, small = BENCHMARKS[name]
    options = (small if smoke else full) | overrides
    report.console.rule(f"{name} {'(smoke)' if smoke else ''} {options or ''}")
    result = importlib.import_module(module).run(**options)
    report.write(name + ("-smoke" if smoke else ""), {"smoke": smoke, "options": options} | result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--smoke", action="store_true", help="a tiny run, to check it runs")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="override an option of the benchmark, e.g. --set posts=500 --set workers=1,2",
    )
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    for name in names:
        run_one(name, args.smoke, overrides)
    return 0
