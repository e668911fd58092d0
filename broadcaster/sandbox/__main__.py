"""``python -m broadcaster.sandbox``: run the four fakes in the foreground.

Prints one JSON line on stdout, ``{"bluesky": url, "mastodon": url, "telegram": url,
"twilio": url, "accounts": {...}}``, then serves until SIGINT/SIGTERM. ``--seed`` creates the
demo accounts listed under ``accounts`` (otherwise use each fake's ``POST /_sandbox/setup``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from . import SERVICES, Sandbox

DEMO = {
    "bluesky": {"handle": "brand.test", "password": "app-password"},
    "mastodon": {"token": "sandbox-mastodon-token", "username": "brand"},
    "telegram": {"token": "123456:SANDBOX-TOKEN", "username": "brand_bot", "chat": "@brand_channel"},
    "twilio": {"account_sid": "AC" + "0" * 32, "auth_token": "sandbox-auth-token"},
}


def seed(sb: Sandbox) -> dict[str, Any]:
    accounts = json.loads(json.dumps(DEMO))
    accounts["bluesky"]["did"] = sb.bluesky.add_account(
        DEMO["bluesky"]["handle"], DEMO["bluesky"]["password"]
    )
    sb.mastodon.add_token(DEMO["mastodon"]["token"], DEMO["mastodon"]["username"])
    sb.telegram.add_bot(DEMO["telegram"]["token"], DEMO["telegram"]["username"])
    accounts["telegram"]["chat_id"] = sb.telegram.add_chat(DEMO["telegram"]["chat"], title="Brand")["id"]
    sb.twilio.add_account(DEMO["twilio"]["account_sid"], DEMO["twilio"]["auth_token"])
    return accounts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broadcaster.sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    for name in SERVICES:
        parser.add_argument(f"--{name}-port", type=int, default=0, metavar="PORT")
    parser.add_argument("--seed", action="store_true", help="create the demo accounts")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=None,
        help="answer every request this late, as a remote API would (default: SANDBOX_LATENCY_MS or 0)",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    ports = {name: getattr(args, f"{name}_port") for name in SERVICES}
    with Sandbox.start(args.host, ports, latency_ms=args.latency_ms) as sb:
        line: dict[str, Any] = dict(sb.urls)
        if args.seed:
            line["accounts"] = seed(sb)
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
