"""Claims make a delivery single-owner; backoff spreads retries."""

import random

from broadcaster.delivery_rules import Claim, backoff_s, claim
from broadcaster.models import Delivery, DeliveryState


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
