"""The `broadcaster` command: one sub-command per process, plus helpers for operators."""

from __future__ import annotations

import argparse
import os
import sys

from broadcaster.brands import hash_api_key, new_api_key


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "broadcaster.api:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )
    return 0


def _celery_argv(kind: str, args: argparse.Namespace) -> list[str]:
    from workers.celery_app import QUEUES

    if kind == "worker":
        return [
            "worker",
            "-Q",
            args.queues or QUEUES,
            "-c",
            str(args.concurrency),
            "-l",
            args.log_level,
            "-E",
            "--without-gossip",
            "--without-mingle",
            "-n",
            args.name,
        ]
    return ["beat", "-l", args.log_level, "-S", "redbeat.RedBeatScheduler"]


def _cmd_worker(args: argparse.Namespace) -> int:
    from workers.celery_app import app

    app.worker_main(_celery_argv("worker", args))
    return 0


def _cmd_beat(args: argparse.Namespace) -> int:
    from workers.celery_app import app

    app.start(_celery_argv("beat", args))
    return 0


def _cmd_keys_new(args: argparse.Namespace) -> int:
    key = new_api_key(args.brand)
    print(f"API key for {args.brand} (shown once, give it to the brand):\n  {key}")
    print(f"Add this line under the brand's api_keys in the brands file:\n  - {hash_api_key(key)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="broadcaster",
        description="Failover Broadcaster: Bluesky first, and a plan when Bluesky fails.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    log_level = os.environ.get("BROADCASTER_LOG_LEVEL", "INFO")

    api = sub.add_parser("api", help="serve the REST API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--log-level", default=log_level)
    api.set_defaults(func=_cmd_api)

    worker = sub.add_parser("worker", help="run a Celery worker (deliveries, dispatch, probes)")
    worker.add_argument("-c", "--concurrency", type=int, default=4)
    worker.add_argument("-Q", "--queues", default=None)
    worker.add_argument("-n", "--name", default="worker@%h")
    worker.add_argument("--log-level", default=log_level)
    worker.set_defaults(func=_cmd_worker)

    beat = sub.add_parser("beat", help="run the scheduler (one active at a time, Redis-locked)")
    beat.add_argument("--log-level", default=log_level)
    beat.set_defaults(func=_cmd_beat)

    keys = sub.add_parser("keys", help="manage brand API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = keys_sub.add_parser("new", help="make a new API key and print its hash for the brands file")
    new.add_argument("brand")
    new.set_defaults(func=_cmd_keys_new)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
