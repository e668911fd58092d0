"""`python -m bench.sandbox_proc SPEC.json`: the sandbox fakes in a process of their own.

An in-process sandbox would share the GIL with the load generator; this one shares
nothing but the loopback. SPEC names the accounts to create and how many extra fake
Bluesky servers (PDS + AppView) to run, one per independent health target::

    {"bluesky": [[handle, password], ...], "mastodon": [[token, username], ...],
     "telegram_bots": [[token, username], ...], "telegram_chats": ["@name", ...],
     "twilio": [[sid, auth], ...], "extra_bluesky": [[[handle, password], ...], ...]}

An optional ``"latency_ms"`` in SPEC makes every fake answer that late (asynchronously,
see broadcaster/sandbox/server.py); the harness can change it later over the control API.

Prints one JSON line with every URL, then serves until SIGTERM, or until its parent goes
away (a benchmark killed with SIGKILL must not leave its sandbox behind).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from broadcaster.sandbox import BlueskyFake, Sandbox


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: stop.set())
    latency = spec.get("latency_ms")
    sb = Sandbox.start(latency_ms=latency)
    extras: list[BlueskyFake] = []
    try:
        for handle, password in spec.get("bluesky", []):
            sb.bluesky.add_account(handle, password)
        for token, username in spec.get("mastodon", []):
            sb.mastodon.add_token(token, username)
        for token, username in spec.get("telegram_bots", []):
            sb.telegram.add_bot(token, username)
        for chat in spec.get("telegram_chats", []):
            sb.telegram.add_chat(chat, title=str(chat))
        for sid, auth in spec.get("twilio", []):
            sb.twilio.add_account(sid, auth)
        for accounts in spec.get("extra_bluesky", []):
            fake = BlueskyFake().start()
            if latency is not None:
                fake.set_latency(latency)
            for handle, password in accounts:
                fake.add_account(handle, password)
            extras.append(fake)
        line = dict(sb.urls) | {"extra_bluesky": [f.url for f in extras]}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            if os.getppid() != parent:  # orphaned: the benchmark is gone
                break
    finally:
        for fake in extras:
            fake.stop()
        sb.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
