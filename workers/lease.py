"""Keep a claimed send's lease alive while its worker is working on it.

A send claims its delivery for `send_lease_s`; the sweeper re-drives a `sending` delivery
whose lease and grace have passed (its worker was lost). A send that legitimately takes longer
(a Telegram run over three black-holed chats took 81 s against a 40 s lease) was re-driven
while it ran, and the second run marked the chat in flight `uncertain`. Here one thread per
process renews the lease of every send in flight every third of the lease, up to `send_max_s`
(a worker stuck beyond every timeout lets go). Registering a send costs a dict entry: sends
shorter than a third of the lease never cause a renewal.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from workers.runtime import Runtime

log = logging.getLogger("broadcaster.lease")


class _Renewer:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.active: dict[tuple[str, str], tuple[int, float]] = {}  # (post, channel) -> (attempt, since)
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        settings = self.rt.settings
        interval = settings.send_lease_s / 3
        while True:
            self.wake.wait(interval)
            self.wake.clear()
            with self.lock:
                sends = list(self.active.items())
            if not sends:
                continue
            try:
                now = self.rt.store.now()
            except Exception:
                log.warning("could not read the clock to renew leases", exc_info=True)
                continue
            for (post_id, channel), (attempt, since) in sends:
                if now - since > settings.send_max_s:
                    continue  # stuck beyond every timeout: let the sweeper take it over
                until = now + settings.send_lease_s
                try:
                    self.rt.store.renew_lease(post_id, channel, attempt, until, until + settings.send_grace_s)
                except Exception:
                    log.warning("could not renew the lease of %s on %s", post_id, channel, exc_info=True)


_renewer: _Renewer | None = None
_lock = threading.Lock()


def _get(rt: Runtime) -> _Renewer:
    global _renewer
    with _lock:
        if _renewer is None or _renewer.pid != os.getpid() or _renewer.rt is not rt:
            _renewer = _Renewer(rt)
        return _renewer


@contextmanager
def kept(rt: Runtime, post_id: str, channel: str, attempt: int) -> Iterator[None]:
    """While the block runs, this attempt's lease is renewed (see the module docstring)."""
    renewer = _get(rt)
    key = (post_id, channel)
    with renewer.lock:
        renewer.active[key] = (attempt, rt.store.now())
    try:
        yield
    finally:
        with renewer.lock:
            renewer.active.pop(key, None)
