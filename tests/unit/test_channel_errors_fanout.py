"""Fan-out rules without Redis: claiming a recipient, Twilio status order, a delivery's verdict,
phone numbers, and the per-thread event loop the Telegram client runs on."""

from __future__ import annotations

import asyncio

import pytest

from broadcaster.core.brands import TelegramConfig
from broadcaster.ledger import recipients as r
from broadcaster.ledger.subscribers import InvalidNumbers, mask_number, normalize, normalize_all
from channels.base import RateLimited, TransientError
from channels.fanout import Run
from workers.event_loop import LoopRunner


# ---- claiming ------------------------------------------------------------------------------------
def test_a_new_or_pending_recipient_is_claimed_for_this_attempt():
    verdict, entry = r.claim_step(None, attempt=1, now=10.0)
    assert verdict == "go"
    assert entry == {"state": "sending", "attempt": 1, "at": 10.0}
    verdict, entry = r.claim_step({"state": "pending", "error": "Twilio answered 503"}, attempt=2, now=11.0)
    assert verdict == "go"
    assert entry["state"] == "sending"
    assert "error" not in entry


def test_a_claim_left_by_a_lost_run_becomes_uncertain_never_resent():
    verdict, entry = r.claim_step({"state": "sending", "attempt": 1, "at": 5.0}, attempt=2, now=20.0)
    assert verdict == "uncertain"
    assert entry["state"] == "uncertain"
    assert "may or may not have arrived" in entry["error"]


@pytest.mark.parametrize("state", ["sent", "failed", "opted_out", "uncertain"])
def test_a_recipient_with_an_outcome_is_left_alone(state):
    assert r.claim_step({"state": state}, attempt=3, now=1.0) == ("done", None)


# ---- Twilio statuses -----------------------------------------------------------------------------
def test_twilio_statuses_only_move_forward():
    entry = {"state": "sent", "status": "queued"}
    sent = r.status_step(entry, "sent", None)
    assert sent == {"state": "sent", "status": "sent"}
    delivered = r.status_step(sent, "delivered", None)
    assert delivered["status"] == "delivered"
    assert r.status_step(delivered, "sent", None) is None  # a late "sent" does not undo "delivered"
    assert r.status_step(delivered, "queued", None) is None


def test_an_undelivered_status_keeps_twilios_error_code():
    new = r.status_step({"state": "sent", "status": "sent"}, "undelivered", "30003")
    assert new == {"state": "sent", "status": "undelivered", "error_code": "30003"}


# ---- verdict -------------------------------------------------------------------------------------
def test_a_delivery_is_open_while_recipients_are_left():
    assert r.verdict({"sent": 3}, open_left=1) == "open"


def test_a_delivery_is_delivered_when_anyone_got_it():
    assert r.verdict({"sent": 1, "failed": 2, "uncertain": 1}, open_left=0) == "delivered"


def test_a_delivery_is_uncertain_when_nobody_is_known_to_have_it_but_someone_may():
    assert r.verdict({"failed": 1, "uncertain": 1}, open_left=0) == "uncertain"


def test_a_delivery_fails_when_every_recipient_failed_or_opted_out():
    assert r.verdict({"failed": 1, "opted_out": 2}, open_left=0) == "failed"


def test_counters_move_with_each_transition():
    deltas = r._counter_deltas({"state": "sending"}, {"state": "sent", "status": "delivered"})
    assert dict(zip(deltas[::2], deltas[1::2], strict=True)) == {"sending": -1, "sent": 1, "delivered": 1}
    assert r._counter_deltas({"state": "sent", "status": "sent"}, {"state": "sent", "status": "sent"}) == []


def test_every_counter_a_transition_moves_has_its_field_and_none_is_another_field():
    states = [r.PENDING, r.SENDING, *r.FINAL]
    moved = {
        str(k)
        for old in states
        for new in states
        for k in r._counter_deltas({"state": old}, {"state": new})[::2]
    }
    moved |= set(r.STATUS_COUNTER.values())
    assert moved == set(r.COUNTERS)
    fields = [r.TOTAL, r.DAY, *(r.RESERVED + c for c in r.COUNTERS)]
    assert len(set(fields)) == len(fields)
    assert all(r.reserved(f) for f in fields)


def test_no_recipient_name_can_be_a_field_of_the_delivery():
    chats = TelegramConfig(bot_token_env="TG", chat_ids=[-1001234567890, "42", "@acme"]).chat_ids
    numbers = normalize_all(["201-555-0123", "+44 20 7946 0958"], "US")
    assert not any(r.reserved(str(name)) for name in [*chats, *numbers])
    with pytest.raises(ValueError, match="must be a number or a @channel name"):
        TelegramConfig(bot_token_env="TG", chat_ids=["#total"])
    with pytest.raises(InvalidNumbers):
        normalize_all(["#total"], "US")


def test_a_run_keeps_the_longest_server_wait_among_its_retries():
    run = Run(what="chats")
    run.retry_later(TransientError("Telegram answered 502"))
    run.retry_later(RateLimited("flood control", 9))
    run.retry_later(RateLimited("flood control", 3))
    assert run.retry.retry_after == 9
    run.wait_for_token(2.0)
    run.wait_for_token(0.5)
    assert run.paced_wait == 0.5


# ---- phone numbers -------------------------------------------------------------------------------
def test_numbers_are_normalised_to_e164():
    assert normalize("+1 (201) 555-0123") == "+12015550123"
    assert normalize("201-555-0123", "US") == "+12015550123"
    assert normalize("+44 20 7946 0958") == "+442079460958"


def test_invalid_numbers_are_rejected_all_named():
    with pytest.raises(InvalidNumbers) as caught:
        normalize_all(["+12015550123", "12", "+1555", "hello"])
    assert set(caught.value.problems) == {"12", "+1555", "hello"}
    assert "needs a +country code" in caught.value.problems["12"]
    assert "not a valid phone number" in caught.value.problems["+1555"]


def test_duplicates_are_merged_in_order():
    assert normalize_all(["+12015550123", "(201) 555-0123", "+12015550124"], "US") == [
        "+12015550123",
        "+12015550124",
    ]


def test_masked_numbers_keep_the_country_and_the_last_four_digits():
    assert mask_number("+12015550123") == "+1201***0123"
    assert r.label_for("sms")("+12015550123") == "+1201***0123"
    assert r.label_for("telegram")("@brand") == "@brand"


# ---- the per-thread event loop -------------------------------------------------------------------
class FakeClient:
    """Stands in for a Bot: records which loop it ran on and whether it was closed."""

    def __init__(self):
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.closed = False

    async def call(self) -> int:
        self.loops.append(asyncio.get_running_loop())
        return len(self.loops)


async def close_client(client: FakeClient) -> None:
    client.closed = True


def test_the_runner_reuses_one_loop_and_one_client_across_calls():
    runner = LoopRunner()
    try:
        made: list[FakeClient] = []

        def factory() -> FakeClient:
            made.append(FakeClient())
            return made[-1]

        first = runner.cached("bot-1", factory, close_client)
        assert runner.run(first.call(), timeout=1) == 1
        again = runner.cached("bot-1", factory, close_client)
        assert runner.run(again.call(), timeout=1) == 2
        assert again is first
        assert len(made) == 1
        assert first.loops[0] is first.loops[1] is runner.loop
    finally:
        runner.close()
    assert made[0].closed
    assert runner.loop.is_closed()


def test_a_call_over_its_timeout_is_cancelled_and_the_loop_stays_usable():
    runner = LoopRunner()
    try:
        with pytest.raises(TimeoutError):
            runner.run(asyncio.sleep(5), timeout=0.01)
        assert runner.run(asyncio.sleep(0, result="ok"), timeout=1) == "ok"
    finally:
        runner.close()
