"""SMS end to end: subscribers through the API, then API -> Redis -> Celery worker -> twilio -> the
sandbox Twilio API, and Twilio's signed status callbacks back into the API."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from twilio.request_validator import RequestValidator

from tests.channel_brands import (
    PACED,
    SENDER,
    SOCIAL,
    THRIFTY,
    TWILIO_AUTH,
    TWILIO_SID,
    WRONGKEYS,
    auth,
    delivery,
    final,
    queue,
    set_subscribers,
    unique,
)
from tests.conftest import ACME
from tests.harness import events_after, latest_event, wait_for, wait_quiet

pytestmark = pytest.mark.integration

NUMBERS = ["+12015550111", "+12015550112", "+12015550113"]
MASKED = ["+1201***0111", "+1201***0112", "+1201***0113"]
CALLBACK = "http://testserver/v1/webhooks/twilio/status"


@pytest.fixture
def twilio(stack):
    fake = stack.sandbox.twilio
    yield fake
    fake.heal()


def texts_with(fake, text: str) -> list[dict]:
    return [m for m in fake.messages if m["body"].startswith(text)]


def creates_with(fake, text: str):
    return [
        r
        for r in fake.requests.where("messages.create")
        if str((r.body or {}).get("Body", "")).startswith(text)
    ]


# ---- subscribers ---------------------------------------------------------------------------------
def test_subscribers_are_stored_as_e164_and_listed_only_to_their_brand(api, stack):
    set_subscribers(api, SOCIAL, ["+1 (201) 555-0111"])
    r = api.post(
        "/v1/sms/subscribers", json={"numbers": ["201-555-0112", "+12015550111"]}, headers=auth(SOCIAL)
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"added": ["+12015550112"], "already": ["+12015550111"], "count": 2}
    listed = api.get("/v1/sms/subscribers", headers=auth(SOCIAL)).json()
    assert listed == {"count": 2, "numbers": ["+12015550111", "+12015550112"]}

    removed = api.request(
        "DELETE",
        "/v1/sms/subscribers",
        json={"numbers": ["+12015550112", "+12015550199"]},
        headers=auth(SOCIAL),
    )
    assert removed.json() == {"removed": ["+12015550112"], "not_subscribed": ["+12015550199"], "count": 1}
    assert api.get("/v1/sms/subscribers", headers=auth(PACED)).json()["numbers"] != listed["numbers"]


def test_invalid_numbers_reject_the_request_naming_each_one(api, stack):
    set_subscribers(api, SOCIAL, ["+12015550111"])
    r = api.post(
        "/v1/sms/subscribers",
        json={"numbers": ["+12015550112", "12", "+1555", "call me"]},
        headers=auth(SOCIAL),
    )
    assert r.status_code == 422
    problems = {tuple(p["loc"]): p["msg"] for p in r.json()["detail"]}
    assert set(problems) == {("body", "numbers", 1), ("body", "numbers", 2), ("body", "numbers", 3)}
    assert problems[("body", "numbers", 2)].startswith("'+1555' is not a valid phone number")
    assert api.get("/v1/sms/subscribers", headers=auth(SOCIAL)).json()["count"] == 1  # all or nothing


def test_subscribers_need_a_brand_key_and_an_sms_channel(api, stack):
    assert api.get("/v1/sms/subscribers").status_code == 401
    r = api.post("/v1/sms/subscribers", json={"numbers": ["+12015550111"]}, headers=auth(ACME))
    assert r.status_code == 404
    assert "no SMS channel" in r.json()["detail"]


# ---- sending -------------------------------------------------------------------------------------
def test_it_texts_every_subscriber_once_with_the_link_and_a_status_callback(api, twilio):
    set_subscribers(api, SOCIAL, NUMBERS)
    text = unique("Flash sale \u2019today\u2019")  # curly quotes: sent as GSM-7 straight ones
    created = queue(
        api, SOCIAL, text=text, link="https://social.example/sale", priority="high", channels=["sms"]
    )
    post = final(api, SOCIAL, created["id"])

    d = delivery(post, "sms")
    assert d["state"] == "delivered", d
    assert d["attempts"] == 1
    sent = texts_with(twilio, text.replace("\u2019", "'"))
    assert sorted(m["to"] for m in sent) == NUMBERS
    for m in sent:
        assert m["body"] == text.replace("\u2019", "'") + "\nhttps://social.example/sale"
        assert m["from_"] == SENDER
        assert m["num_segments"] == "1"
        assert m["status_callback"] == f"{CALLBACK}?post={post['id']}"
    assert d["recipients"]["_summary"] == {"total": 3, "sent": 3}
    assert sorted(k for k in d["recipients"] if k != "_summary") == MASKED
    sids = {m["sid"] for m in sent}
    assert {e["sid"] for k, e in d["recipients"].items() if k != "_summary"} == sids
    answer = api.get(f"/v1/posts/{post['id']}", headers=auth(SOCIAL)).text
    assert not any(n in answer for n in NUMBERS)  # numbers are masked outside the subscriber API


def test_a_post_below_the_brands_sms_priority_is_skipped_not_sent(api, twilio):
    set_subscribers(api, SOCIAL, NUMBERS)
    text = unique("Not urgent")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, priority="normal", channels=["sms"])["id"])

    d = delivery(post, "sms")
    assert d["state"] == "skipped"
    assert d["reason"] == "priority normal is below the brand's SMS threshold (high)"
    assert creates_with(twilio, text) == []


def test_a_subscriber_who_replied_stop_is_dropped_and_not_retried(api, stack, twilio):
    cursor = latest_event(stack.store(), SOCIAL.id)
    set_subscribers(api, SOCIAL, NUMBERS)
    twilio.opt_out(NUMBERS[1])
    try:
        text = unique("Opt-out")
        post = final(api, SOCIAL, queue(api, SOCIAL, text=text, priority="urgent", channels=["sms"])["id"])
    finally:
        twilio.opt_in(NUMBERS[1])

    d = delivery(post, "sms")
    assert d["state"] == "delivered"
    assert d["recipients"]["_summary"] == {"total": 3, "sent": 2, "opted_out": 1}
    assert d["recipients"][MASKED[1]]["state"] == "opted_out"
    assert "21610" in d["recipients"][MASKED[1]]["error"]
    assert len([r for r in creates_with(twilio, text) if r.body["To"] == NUMBERS[1]]) == 1
    assert api.get("/v1/sms/subscribers", headers=auth(SOCIAL)).json()["numbers"] == [NUMBERS[0], NUMBERS[2]]
    events = events_after(api, auth(SOCIAL), cursor)
    opted = [e for e in events if e["type"] == "sms.opted_out"]
    assert opted[-1]["number"] == MASKED[1]
    assert not any(NUMBERS[1] in str(e) for e in events)


def test_the_daily_budget_skips_a_post_that_no_longer_fits(api, twilio):
    set_subscribers(api, THRIFTY, NUMBERS[:2])  # 2 segments a post; 3 a day
    first_text, second_text = unique("Budget one"), unique("Budget two")
    first = final(api, THRIFTY, queue(api, THRIFTY, text=first_text, priority="high", channels=["sms"])["id"])
    second = final(
        api, THRIFTY, queue(api, THRIFTY, text=second_text, priority="high", channels=["sms"])["id"]
    )

    assert delivery(first, "sms")["state"] == "delivered"
    d = delivery(second, "sms")
    assert d["state"] == "skipped"
    assert d["reason"].startswith("the daily SMS budget is spent: 2 of 3 segments used today")
    assert creates_with(twilio, second_text) == []


def test_a_429_is_waited_out_and_each_number_is_texted_once(api, twilio):
    set_subscribers(api, SOCIAL, NUMBERS)
    twilio.fail("messages", "rate_limit", retry_after=1, count=1)
    text = unique("Twilio 429")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, priority="high", channels=["sms"])["id"])

    d = delivery(post, "sms")
    assert d["state"] == "delivered"
    assert d["attempts"] == 1  # a 429 does not use an attempt
    assert sorted(m["to"] for m in texts_with(twilio, text)) == NUMBERS
    limited = next(r for r in creates_with(twilio, text) if r.status == 429)
    again = next(
        r for r in creates_with(twilio, text) if r.status == 201 and r.body["To"] == limited.body["To"]
    )
    assert again.at - limited.at >= 1.0  # no sooner than Twilio's Retry-After


def test_a_5xx_is_retried_for_that_number_only(api, twilio):
    set_subscribers(api, SOCIAL, NUMBERS)
    twilio.fail("messages", "error", status=503, count=1)
    text = unique("Twilio 503")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, priority="high", channels=["sms"])["id"])

    d = delivery(post, "sms")
    assert d["state"] == "delivered"
    assert d["attempts"] == 2
    assert len(creates_with(twilio, text)) == 4
    assert sorted(m["to"] for m in texts_with(twilio, text)) == NUMBERS


def test_a_timeout_leaves_that_number_uncertain_and_it_is_never_texted_twice(api, stack, twilio):
    set_subscribers(api, SOCIAL, NUMBERS)
    twilio.fail("messages", "slow", delay=3, count=1)  # the worker waits 2 s; Twilio still sends
    text = unique("Twilio slow")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, priority="high", channels=["sms"])["id"])

    d = delivery(post, "sms")
    assert d["state"] == "delivered"
    assert d["recipients"]["_summary"] == {"total": 3, "sent": 2, "uncertain": 1}
    wait_for(lambda: len(texts_with(twilio, text)) == 3, timeout=5, what="the slow send to land")
    wait_quiet(stack.store(), twilio, posts=[post["id"]])  # a (wrong) resend would have happened by now
    assert len(creates_with(twilio, text)) == 3
    assert sorted(m["to"] for m in texts_with(twilio, text)) == NUMBERS


def test_wrong_twilio_credentials_fail_at_once_naming_the_brand(api, twilio):
    set_subscribers(api, WRONGKEYS, NUMBERS[:1])
    text = unique("Wrong Twilio")
    post = final(api, WRONGKEYS, queue(api, WRONGKEYS, text=text, priority="high", channels=["sms"])["id"])

    d = delivery(post, "sms")
    assert d["state"] == "failed"
    assert d["attempts"] == 1
    assert d["error"] == "Twilio rejected the account SID or auth token for brand wrongkeys"
    assert texts_with(twilio, text) == []


def test_texts_are_paced_at_the_brands_rate_without_using_attempts(api, twilio):
    numbers = [f"+1201555014{i}" for i in range(5)]
    set_subscribers(api, PACED, numbers)  # 2 a second, bursts of 2
    text = unique("Paced SMS")
    post = final(
        api, PACED, queue(api, PACED, text=text, priority="high", channels=["sms"])["id"], timeout=30
    )

    d = delivery(post, "sms")
    assert d["state"] == "delivered"
    assert d["attempts"] == 1
    assert d["recipients"]["_summary"] == {"total": 5, "sent": 5}, d["recipients"]
    sent_at = sorted(r.at for r in creates_with(twilio, text))
    assert len(sent_at) == 5
    assert sent_at[-1] - sent_at[0] >= 1.2  # 2 at once, then one every 0.5 s


# ---- status callbacks ----------------------------------------------------------------------------
def replay(api, callback: dict, signature: str | None = None):
    """Send one of the sandbox's signed callbacks to our API, as Twilio would have."""
    parts = urlsplit(callback["url"])
    headers = {"X-Twilio-Signature": callback["signature"] if signature is None else signature}
    return api.post(f"{parts.path}?{parts.query}", data=callback["params"], headers=headers)


def test_signed_status_callbacks_move_each_number_to_delivered(api, twilio):
    set_subscribers(api, SOCIAL, NUMBERS[:2])
    twilio.callback_delay = 0.01
    twilio.callbacks_enabled = True  # queued -> sent -> delivered, signed with the account's token
    try:
        text = unique("Callbacks")
        post = final(api, SOCIAL, queue(api, SOCIAL, text=text, priority="high", channels=["sms"])["id"])
        sids = {m["sid"] for m in texts_with(twilio, text)}
        ours = lambda: [c for c in twilio.callbacks if c["params"]["MessageSid"] in sids]  # noqa: E731
        wait_for(lambda: len(ours()) == 6, timeout=10, what="the sandbox to report every status")
    finally:
        twilio.callbacks_enabled = False

    for callback in sorted(ours(), key=lambda c: c["params"]["MessageStatus"] != "delivered"):
        r = replay(api, callback)  # out of order on purpose: "delivered" first, then stale ones
        assert r.status_code == 204, r.text
    d = delivery(api.get(f"/v1/posts/{post['id']}", headers=auth(SOCIAL)).json(), "sms")
    assert d["recipients"]["_summary"] == {"total": 2, "sent": 2, "delivered": 2}
    assert {d["recipients"][m]["status"] for m in MASKED[:2]} == {"delivered"}


def test_unsigned_or_wrongly_signed_status_callbacks_get_403_and_change_nothing(api, twilio):
    set_subscribers(api, SOCIAL, NUMBERS[:1])
    text = unique("Forged callbacks")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, priority="high", channels=["sms"])["id"])
    [message] = texts_with(twilio, text)
    params = {
        "AccountSid": TWILIO_SID,
        "MessageSid": message["sid"],
        "MessageStatus": "delivered",
        "To": NUMBERS[0],
        "From": SENDER,
    }
    url = f"{CALLBACK}?post={post['id']}"
    good = RequestValidator(TWILIO_AUTH).compute_signature(url, params)
    forged = {
        "unsigned": {"url": url, "params": params, "signature": ""},
        "wrong token": {
            "url": url,
            "params": params,
            "signature": RequestValidator("guess").compute_signature(url, params),
        },
        "other url": {"url": f"{CALLBACK}?post=p_other", "params": params, "signature": good},
        "changed field": {"url": url, "params": params | {"MessageStatus": "undelivered"}, "signature": good},
        "unknown account": {
            "url": url,
            "params": params | {"AccountSid": "AC" + "0" * 32},
            "signature": good,
        },
    }
    for name, callback in forged.items():
        r = api.post(
            callback["url"].removeprefix("http://testserver"),
            data=callback["params"],
            headers={"X-Twilio-Signature": callback["signature"]} if callback["signature"] else {},
        )
        assert r.status_code == 403, name
    d = delivery(api.get(f"/v1/posts/{post['id']}", headers=auth(SOCIAL)).json(), "sms")
    assert d["recipients"][MASKED[0]]["status"] == "queued"

    ok = api.post(url.removeprefix("http://testserver"), data=params, headers={"X-Twilio-Signature": good})
    assert ok.status_code == 204
    d = delivery(api.get(f"/v1/posts/{post['id']}", headers=auth(SOCIAL)).json(), "sms")
    assert d["recipients"][MASKED[0]]["status"] == "delivered"
