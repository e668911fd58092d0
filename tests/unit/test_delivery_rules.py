"""Claims make a delivery single-owner; backoff spreads retries."""

import random

from broadcaster.core.delivery_rules import Claim, backoff_s, claim, should_redispatch, should_redrive
from broadcaster.core.models import Delivery, DeliveryState


def test_a_pending_delivery_is_claimed_and_counts_an_attempt():
    verdict, new = claim(Delivery(channel="bluesky"), now=100.0, lease_s=10, idempotent=True)
    assert verdict == Claim.go
    assert new.state == DeliveryState.sending
    assert new.attempts == 1
    assert new.lease_until == 110.0


def test_a_live_lease_keeps_a_second_worker_out():
    d = Delivery(channel="bluesky", state=DeliveryState.sending, attempts=1, lease_until=200.0)
    assert claim(d, now=150.0, lease_s=10, idempotent=True) == (Claim.busy, None)


def test_an_expired_lease_on_an_idempotent_channel_is_taken_over():
    d = Delivery(channel="mastodon", state=DeliveryState.sending, attempts=1, lease_until=100.0)
    verdict, new = claim(d, now=150.0, lease_s=10, idempotent=True)
    assert verdict == Claim.go
    assert new.attempts == 2


def test_an_expired_lease_on_a_non_idempotent_channel_becomes_uncertain_not_a_resend():
    d = Delivery(channel="sms", state=DeliveryState.sending, attempts=1, lease_until=100.0)
    verdict, new = claim(d, now=150.0, lease_s=10, idempotent=False)
    assert verdict == Claim.uncertain
    assert new.state == DeliveryState.uncertain
    assert "may or may not" in new.error


def test_final_and_held_deliveries_are_left_alone():
    for state in ("delivered", "failed", "held", "skipped", "uncertain", "canceled"):
        d = Delivery(channel="rss", state=DeliveryState(state))
        assert claim(d, now=1.0, lease_s=1, idempotent=True) == (Claim.done, None)


def test_backoff_grows_exponentially_within_jitter_and_is_capped():
    rng = random.Random(7)
    waits = [backoff_s(a, base_s=2, max_s=60, rng=rng) for a in range(1, 9)]
    for attempt, wait in enumerate(waits, start=1):
        ceiling = min(60, 2 * 2 ** (attempt - 1))
        assert ceiling / 2 <= wait <= ceiling
    assert max(waits) <= 60


def _at(state: str, updated: float, lease: float | None = None) -> Delivery:
    from datetime import UTC, datetime

    return Delivery(
        channel="mastodon",
        state=DeliveryState(state),
        lease_until=lease,
        updated_at=datetime.fromtimestamp(updated, UTC),
    )


def test_the_sweeper_re_drives_a_send_whose_worker_is_gone_even_behind_a_backlog():
    assert should_redrive(_at("sending", 0, lease=90), now=100, backlog=5000, max_queue_wait_s=300)
    assert not should_redrive(_at("sending", 0, lease=110), now=100, backlog=0, max_queue_wait_s=300)


def test_the_sweeper_leaves_queued_deliveries_alone_while_a_backlog_drains():
    assert not should_redrive(_at("pending", 50), now=100, backlog=5000, max_queue_wait_s=300)
    assert should_redrive(_at("pending", 50), now=100, backlog=0, max_queue_wait_s=300)
    assert should_redrive(_at("pending", 50), now=400, backlog=5000, max_queue_wait_s=300)


def test_the_sweeper_never_re_drives_a_final_or_held_delivery():
    for state in ("delivered", "held", "uncertain"):
        assert not should_redrive(_at(state, 0), now=1000, backlog=0, max_queue_wait_s=1)


def test_a_rate_limited_retry_gives_the_attempt_back_and_remembers_when_the_429s_began():
    from broadcaster.core.delivery_rules import rate_limited_retry

    d = Delivery(channel="telegram", state=DeliveryState.sending, attempts=3)
    first = rate_limited_retry(d, "flood control", now=100.0)
    assert first.state == DeliveryState.pending
    assert first.attempts == 2
    assert first.limited_since == 100.0
    again = rate_limited_retry(first.model_copy(update={"attempts": 3}), "flood control", now=160.0)
    assert again.limited_since == 100.0


def test_the_sweeper_dispatches_a_claimed_post_again_only_when_its_share_cannot_be_waiting():
    assert should_redispatch(50, now=100, shares_waiting=False, max_queue_wait_s=300)  # share lost
    assert not should_redispatch(50, now=100, shares_waiting=True, max_queue_wait_s=300)
    assert should_redispatch(50, now=350, shares_waiting=True, max_queue_wait_s=300)  # waited too long


def test_a_retry_past_the_servers_dedupe_window_is_uncertain_not_resent():
    from broadcaster.core.delivery_rules import Claim, claim, rate_limited_retry, retry_later
    from broadcaster.core.models import Delivery, DeliveryState

    d = Delivery(channel="mastodon")
    verdict, d = claim(d, 1000.0, 40, True, horizon_s=3000)
    assert verdict == Claim.go
    assert d.first_try_at == 1000.0
    d = retry_later(d, "timed out")  # the answer was lost: the status may exist
    verdict, again = claim(d, 3900.0, 40, True, horizon_s=3000)  # still within the window
    assert verdict == Claim.go
    assert again.first_try_at == 1000.0
    d = rate_limited_retry(again, "429", 3950.0)  # a 429 gives this attempt back, not the first
    verdict, late = claim(d, 4001.0, 40, True, horizon_s=3000)
    assert verdict == Claim.uncertain
    assert late.state == DeliveryState.uncertain
    assert "not resent" in late.error


def test_a_post_that_only_met_429s_starts_its_window_afresh():
    from broadcaster.core.delivery_rules import Claim, claim, rate_limited_retry
    from broadcaster.core.models import Delivery

    d = Delivery(channel="mastodon")
    _, d = claim(d, 1000.0, 40, True, horizon_s=3000)
    d = rate_limited_retry(d, "429", 1001.0)  # nothing was posted: attempts back to 0
    verdict, d = claim(d, 9000.0, 40, True, horizon_s=3000)
    assert verdict == Claim.go
    assert d.first_try_at == 9000.0


def test_delivered_keeps_the_channels_remark_as_the_reason():
    from broadcaster.core.delivery_rules import delivered

    d = Delivery(channel="bluesky", state=DeliveryState.sending, reason="released by the backfill")
    assert delivered(d, "at://x", None).reason == "released by the backfill"
    noted = delivered(d, "at://x", None, note="sent without a link card: the page answered 404")
    assert noted.state == DeliveryState.delivered
    assert noted.reason == "sent without a link card: the page answered 404"
