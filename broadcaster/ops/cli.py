"""The `broadcaster` command: one sub-command per process, plus helpers for operators."""

from __future__ import annotations

import argparse
import os
import sys

from broadcaster.core.brands import hash_api_key, new_api_key

WORKER_POOLS = ("prefork", "threads", "solo")


def _refuse_busy(host: str, wanted: list[tuple[int, str]]) -> bool:
    """Say so (naming the port and the flag) and return True when a port we need is taken."""
    from broadcaster.ops.ports import busy

    problem = busy(host, wanted)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
    return problem is not None


def _cmd_api(args: argparse.Namespace) -> int:
    from broadcaster.api.server import serve, uvicorn_options
    from broadcaster.common.logs import configure_logging
    from broadcaster.core.settings import get_settings

    if _refuse_busy(args.host, [(args.port, "--port")]):
        return 2

    configure_logging(get_settings(), "api")  # this process (with workers: their supervisor)
    serve(host=args.host, port=args.port, log_level=args.log_level.lower(), **uvicorn_options(args.workers))
    return 0


PROBE_THREADS = 16  # probes in flight in one probe worker: each may wait out a hung AppView


def _celery_argv(kind: str, args: argparse.Namespace) -> list[str]:
    from broadcaster.common.celeryconf import WORKER_QUEUES

    if kind == "worker":
        if getattr(args, "probes", False):
            return _probe_worker_argv(args)
        return [
            "worker",
            "-Q",
            args.queues or WORKER_QUEUES,
            "-c",
            str(args.concurrency or 4),
            "-P",
            _worker_pool(args),
            "-l",
            args.log_level,
            "-E",
            "--without-gossip",
            "--without-mingle",
            "-n",
            args.name or "worker@%h",
        ]
    return ["beat", "-l", args.log_level, "-S", "redbeat.RedBeatScheduler"]


def _probe_worker_argv(args: argparse.Namespace) -> list[str]:
    """`--probes`: only the Bluesky probes, on threads. A probe mostly waits (and in a hang it
    waits out its whole timeout), so a thread per probe in flight keeps detection on time
    where a process per probe would run out of slots."""
    from broadcaster.common.celeryconf import PROBE_QUEUE

    return [
        "worker",
        "-Q",
        args.queues or PROBE_QUEUE,
        "-c",
        str(args.concurrency or PROBE_THREADS),
        "-P",
        "threads",
        "-l",
        args.log_level,
        "--without-gossip",
        "--without-mingle",
        "-n",
        args.name or "probes@%h",
    ]


def _worker_pool(args: argparse.Namespace) -> str:
    """`--pool`, else BROADCASTER_WORKER_POOL (so `broadcaster up` children follow it too)."""
    if getattr(args, "pool", None):
        return args.pool
    from broadcaster.core.settings import get_settings

    return get_settings().worker_pool


def _cmd_worker(args: argparse.Namespace) -> int:
    from workers.celery_app import app

    app.worker_main(_celery_argv("worker", args))
    return 0


def _cmd_beat(args: argparse.Namespace) -> int:
    from workers.beat_runner import run_beat_forever

    return run_beat_forever(_celery_argv("beat", args))


def _cmd_flower(args: argparse.Namespace) -> int:
    from broadcaster.core.settings import get_settings
    from broadcaster.ops.flower import run_flower

    if _refuse_busy(args.host, [(args.port or get_settings().flower_port, "--port")]):
        return 2
    return run_flower(args.host, args.port)


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    import socket

    from broadcaster.core.settings import get_settings
    from broadcaster.ledger.connection import get_redis
    from broadcaster.ledger.readiness import container_check

    settings = get_settings()
    name = args.worker_name or f"worker@{socket.gethostname()}"
    result = container_check(get_redis(settings), settings, args.component, name)
    print(f"{result.name}: {'ok' if result.ok else 'FAILING'} ({result.detail})")
    return 0 if result.ok else 1


def _cmd_up(args: argparse.Namespace) -> int:
    from broadcaster.ops.up import UpOptions, run_up

    wanted = [(args.api_port, "--api-port")] + (
        [] if args.no_flower else [(args.flower_port, "--flower-port")]
    )
    if _refuse_busy(args.host, wanted):
        return 2
    opts = UpOptions(
        host=args.host,
        api_port=args.api_port,
        flower_port=args.flower_port,
        concurrency=args.concurrency,
        flower=not args.no_flower,
    )
    return run_up(opts)


def _cmd_demo(args: argparse.Namespace) -> int:
    from broadcaster.ops.demo import DemoOptions, run_demo

    if _refuse_busy(args.host, [(args.api_port, "--api-port"), (args.flower_port, "--flower-port")]):
        return 2
    opts = DemoOptions(
        host=args.host,
        api_port=args.api_port,
        flower_port=args.flower_port,
        duration=args.duration,
        outage=not args.no_outage,
        live=not args.plain,
    )
    return run_demo(opts)


def _cmd_keys_new(args: argparse.Namespace) -> int:
    key = new_api_key(args.brand)
    print(f"API key for {args.brand} (shown once, give it to the brand):\n  {key}")
    print(f"Add this line under the brand's api_keys in the brands file:\n  - {hash_api_key(key)}")
    return 0


def _cmd_channels_check(args: argparse.Namespace) -> int:
    """One row per brand and channel (and per watcher account): does the service accept our
    credentials, and do the probe feeds exist there?"""
    from rich.console import Console
    from rich.table import Table

    from broadcaster.core.brands import load_brands
    from broadcaster.core.settings import get_settings
    from broadcaster.ledger.connection import get_redis
    from channels.base import ChannelContext
    from channels.checks import check_brands, check_watchers
    from workers import event_loop

    settings = get_settings()
    brands = load_brands(settings.brands_file)
    chosen = [b for b in brands if args.brand in (None, b.id)]
    if not chosen:
        print(f"no brand {args.brand!r} in {settings.brands_file}", file=sys.stderr)
        return 2
    ctx = ChannelContext(settings=settings, redis=get_redis(settings))
    event_loop.install(ctx.extras)
    try:
        results = check_brands(chosen, ctx) + check_watchers(brands.watchers, chosen, ctx)
    finally:
        event_loop.stop()
    table = Table(title="Channel credentials", title_justify="left")
    for column in ("brand", "channel", "result", "details"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(r.brand, r.channel, "[green]ok[/]" if r.ok else "[red]FAILED[/]", r.detail)
    Console().print(table)
    return 0 if all(r.ok for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="broadcaster",
        description="Failover Broadcaster: Bluesky first, and a plan when Bluesky fails.",
        epilog="New here? `broadcaster demo` plays a Bluesky outage on fake services. One machine: "
        "`broadcaster up`. Production: one process per command (api, worker, beat, flower); "
        "see README.md. `broadcaster COMMAND --help` for each.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    log_level = os.environ.get("BROADCASTER_LOG_LEVEL", "INFO")

    api = sub.add_parser("api", help="serve the REST API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--log-level", default=log_level)
    api.add_argument(
        "-w",
        "--workers",
        type=int,
        default=None,
        help="API processes sharing the port (default BROADCASTER_API_WORKERS, 2); about one per core",
    )
    api.set_defaults(func=_cmd_api)

    worker = sub.add_parser("worker", help="run a Celery worker (deliveries, dispatch, probes)")
    worker.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=None,
        help="pool processes (prefork) or threads (threads): deliveries in flight in this worker "
        f"(default 4; with --probes, {PROBE_THREADS} threads)",
    )
    worker.add_argument(
        "--probes",
        action="store_true",
        help="serve only the Bluesky probes, on threads (`broadcaster up` runs one beside the worker): "
        "a hung AppView then holds a thread per probe, not a delivery process",
    )
    worker.add_argument(
        "-P",
        "--pool",
        choices=WORKER_POOLS,
        default=None,
        help="prefork (a process per delivery in flight) or threads (many deliveries in flight in one "
        "process: for I/O-bound delivery, e.g. `--pool threads -c 32`); default BROADCASTER_WORKER_POOL",
    )
    worker.add_argument("-Q", "--queues", default=None)
    worker.add_argument("-n", "--name", default=None, help="default worker@%%h (probes@%%h with --probes)")
    worker.add_argument("--log-level", default=log_level)
    worker.set_defaults(func=_cmd_worker)

    beat = sub.add_parser("beat", help="run the scheduler (one active at a time, Redis-locked)")
    beat.add_argument("--log-level", default=log_level)
    beat.set_defaults(func=_cmd_beat)

    flower = sub.add_parser(
        "flower",
        help="run Flower, the admins' view of workers and tasks (basic auth, persistent)",
        description="Flower with basic auth from BROADCASTER_FLOWER_USER / BROADCASTER_FLOWER_PASSWORD; "
        "in production it refuses to start without a password.",
    )
    flower.add_argument("--host", default="127.0.0.1")
    flower.add_argument("--port", type=int, default=None, help="default: BROADCASTER_FLOWER_PORT (5555)")
    flower.set_defaults(func=_cmd_flower)

    hc = sub.add_parser(
        "healthcheck",
        help="exit 0 when a component is healthy, judged from Redis (for Docker health checks)",
    )
    hc.add_argument("component", choices=["worker", "scheduler", "ready"])
    hc.add_argument("--worker-name", default=None, help="default: worker@<this host>")
    hc.set_defaults(func=_cmd_healthcheck)

    up = sub.add_parser(
        "up",
        help="everything on one machine: Redis (found or embedded), API, worker, probe worker, beat, Flower",
        description="Uses REDIS_URL when set; else a Redis on 127.0.0.1:6379; else starts an embedded "
        "redis-server with its data (AOF) under BROADCASTER_DATA_DIR. Ctrl-C or SIGTERM stops it all.",
    )
    demo = sub.add_parser(
        "demo",
        help="`up` plus fake Bluesky/Mastodon/Telegram/Twilio and a scripted Bluesky outage to watch",
        description="Queues posts for a demo brand, breaks Bluesky's feeds (login still works), and "
        "shows health going degraded -> down, the failover, recovery and the backfill, live.",
    )
    for p_ in (up, demo):
        p_.add_argument("--host", default="127.0.0.1", help="address the API and Flower listen on")
        p_.add_argument("--api-port", type=int, default=8000)
        p_.add_argument("--flower-port", type=int, default=5555)
    up.add_argument("-c", "--concurrency", type=int, default=2, help="worker processes")
    up.add_argument("--no-flower", action="store_true", help="do not start Flower")
    up.set_defaults(func=_cmd_up)
    demo.add_argument("--no-outage", action="store_true", help="only queue and deliver posts; break nothing")
    demo.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: at Ctrl-C)"
    )
    demo.add_argument("--plain", action="store_true", help="print stages as lines instead of a live table")
    demo.set_defaults(func=_cmd_demo)

    keys = sub.add_parser("keys", help="manage brand API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = keys_sub.add_parser("new", help="make a new API key and print its hash for the brands file")
    new.add_argument("brand")
    new.set_defaults(func=_cmd_keys_new)

    channels = sub.add_parser("channels", help="inspect the brands' outbound channels")
    channels_sub = channels.add_subparsers(dest="channels_command", required=True, metavar="ACTION")
    check = channels_sub.add_parser("check", help="verify each configured channel's credentials")
    check.add_argument("--brand", default=None, help="only this brand (default: every brand)")
    check.set_defaults(func=_cmd_channels_check)
    return p


def command_list(parser: argparse.ArgumentParser) -> str:
    """`broadcaster` alone: what it is, each command on one line, and where to start."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    width = max(len(c.dest) for c in sub._choices_actions)
    lines = [f"usage: {parser.prog} COMMAND [options]", "", parser.description or "", "", "commands:"]
    lines += [f"  {c.dest.ljust(width)}  {c.help}" for c in sub._choices_actions]
    lines += ["", parser.epilog or ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        print(command_list(parser))
        return 0
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
