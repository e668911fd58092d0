"""What Telegram and SMS share: one post to many recipients, each tracked on its own.

A run sends to the recipients still open (see `broadcaster.ledger.recipients`) as fast as the
pacing buckets allow, claiming each batch and its tokens in one round trip (`Roster.take`),
then ends in one of these ways:

* recipients left because a send failed in a way that may succeed later -> the typed
  error (transient or rate-limited) is raised and uses up an attempt; on the last
  attempt such a recipient is recorded `failed` instead;
* recipients left only because the pacing budget ran out (or the run hit its batch
  size) -> `Deferred`: continue later without using up an attempt;
* nobody left -> `delivered` if anyone got it, `uncertain` if nobody is known to have
  but someone may have, else `failed`.

One recipient failing never fails the others; every error carries the per-recipient
summary so the ledger shows progress at each step. A run that ends in an error writes its
recipients' outcomes before the error goes on (`written_on_error`); a delivered one hands
them to the `delivered` verb with the receipt, which writes them with the delivery's record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from broadcaster.core.settings import Settings
from broadcaster.ledger.recipients import Roster, verdict
from channels.base import ChannelError, Deferred, PermanentError, Receipt, Uncertain

log = logging.getLogger("broadcaster.fanout")


@dataclass
class Run:
    """What one run of a fan-out learned, besides each recipient's own outcome."""

    what: str  # "chats", "subscribers": for messages an operator reads
    retry: ChannelError | None = None  # first retryable error of this run
    paced_wait: float | None = None  # shortest wait for a pacing token
    tried: set[str] = field(default_factory=set)

    def retry_later(self, error: ChannelError) -> None:
        if self.retry is None or (error.retry_after or 0) > (self.retry.retry_after or 0):
            self.retry = error

    def wait_for_token(self, wait_s: float) -> None:
        self.paced_wait = wait_s if self.paced_wait is None else min(self.paced_wait, wait_s)


def last_try(attempt: int, settings: Settings) -> bool:
    """On the last attempt a retryable failure is final for that recipient."""
    return attempt >= settings.max_attempts


@contextmanager
def written_on_error(roster: Roster) -> Iterator[None]:
    """A run that ends in an error writes the outcomes it recorded before the error goes on
    (if that fails, they stay claimed: `uncertain` next time, never sent twice)."""
    try:
        yield
    except BaseException:
        try:
            roster.flush()
        except Exception:
            log.warning("could not write the outcomes of a run that failed", exc_info=True)
        raise


def finish(roster: Roster, run: Run) -> Receipt:
    """Turn the state of every recipient into the delivery's outcome (see the module docstring).
    Call it inside `written_on_error`: the errors it raises write the run's outcomes there."""
    public = roster.public()
    left = roster.open_count()
    if left:
        if run.retry is not None:
            raise run.retry.carrying(public)
        wait = run.paced_wait if run.paced_wait is not None else 0.0
        raise Deferred(f"paced: {left} {run.what} left, continuing in {wait:.1f} s", wait).carrying(public)
    counts = roster.counts()
    total = roster.total()
    outcome = verdict(counts, 0)
    if outcome == "delivered":
        return Receipt(
            remote_id=f"{counts.get('sent', 0)} of {total} {run.what}",
            recipients=public,
            outcomes=roster.outcomes(),
        )
    problems = _problems(public, counts)
    if outcome == "uncertain":
        raise Uncertain(f"no {run.what} known to have the post; some may: {problems}").carrying(public)
    raise PermanentError(f"none of the {total} {run.what} got the post: {problems}").carrying(public)


def _problems(public: dict[str, dict[str, Any]], counts: dict[str, int]) -> str:
    """A short, readable list of what went wrong (names are already masked)."""
    shown = [f"{name}: {e.get('error') or e['state']}" for name, e in public.items() if name != "_summary"]
    if shown:
        return "; ".join(shown[:5]) + (f" (+{len(shown) - 5} more)" if len(shown) > 5 else "")
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if n and state != "pending")
