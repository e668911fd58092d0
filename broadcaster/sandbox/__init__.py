"""Local fake servers of Bluesky, Mastodon, Telegram and Twilio for tests and the demo.

Real HTTP servers on loopback that the real client libraries talk to (atproto ``Client``,
Mastodon.py, python-telegram-bot ``Bot``, twilio ``Client``). Each keeps state, records the
requests it received and can fail on command (``fail(group, mode, **opts)`` / ``heal()``,
or ``POST /_sandbox/fail`` on its own port)::

    from broadcaster.sandbox import Sandbox

    with Sandbox.start() as sb:
        did = sb.bluesky.add_account("brand.test", "app-password")
        client = atproto.Client(base_url=sb.bluesky.url)
        ...
        sb.bluesky.fail("feeds")  # 502 UpstreamFailure on timeline/feed/profile reads

``Sandbox.start(latency_ms=100)`` (or ``{"mastodon": 100, "telegram": 50}``, or the
``SANDBOX_LATENCY_MS`` environment variable) makes every fake answer that much later, as
a remote API does; the wait is asynchronous, so concurrent requests overlap.
"""

from __future__ import annotations

import threading
from typing import Any

from .bluesky import BlueskyFake
from .mastodon import MastodonFake
from .server import FakeService, RecordedRequest, RequestLog
from .telegram import TelegramFake
from .twilio import TwilioFake

__all__ = [
    "BlueskyFake",
    "FakeService",
    "MastodonFake",
    "RecordedRequest",
    "RequestLog",
    "Sandbox",
    "TelegramFake",
    "TwilioFake",
]

SERVICES = ("bluesky", "mastodon", "telegram", "twilio")


class Sandbox:
    """All four fakes, each on its own port. Use ``Sandbox.start()``; a context manager."""

    def __init__(self) -> None:
        self.bluesky = BlueskyFake()
        self.mastodon = MastodonFake()
        self.telegram = TelegramFake()
        self.twilio = TwilioFake()

    @classmethod
    def start(
        cls,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
        latency_ms: float | dict[str, float] | None = None,
    ) -> Sandbox:
        """Start all four fakes on ``host``; ``ports`` maps service name to port (0 = free).

        ``latency_ms``: response latency of every fake, or per service name (others keep
        what the environment says, 0 by default); see ``FakeService.set_latency``.
        """
        sb = cls()
        ports = ports or {}
        unknown = set(ports) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; one of {SERVICES}")
        if latency_ms is not None:
            sb.set_latency(latency_ms)
        try:
            for fake in sb.services:
                fake.start(host, int(ports.get(fake.name, 0)))
        except BaseException:
            sb.stop()
            raise
        return sb

    @property
    def services(self) -> list[FakeService]:
        return [self.bluesky, self.mastodon, self.telegram, self.twilio]

    @property
    def urls(self) -> dict[str, str]:
        return {fake.name: fake.url for fake in self.services}

    def set_latency(self, latency_ms: float | dict[str, float]) -> None:
        """Response latency in ms for every fake, or per service name."""
        per = latency_ms if isinstance(latency_ms, dict) else dict.fromkeys(SERVICES, latency_ms)
        unknown = set(per) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; one of {SERVICES}")
        for fake in self.services:
            if fake.name in per:
                fake.set_latency(per[fake.name])

    def state(self) -> dict[str, Any]:
        return {fake.name: fake.state() for fake in self.services}

    def heal(self) -> None:
        for fake in self.services:
            fake.heal()

    def reset(self) -> None:
        """Clear recorded requests, items and switches of every fake (accounts stay)."""
        for fake in self.services:
            fake.reset()

    def stop(self) -> None:
        """Stop all four (in parallel: each uvicorn takes ~0.2 s to notice)."""
        threads = [threading.Thread(target=fake.stop) for fake in self.services]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
