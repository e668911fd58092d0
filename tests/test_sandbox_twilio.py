"""The Twilio fake against the real twilio Client."""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl

import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from broadcaster.sandbox import TwilioFake
from broadcaster.sandbox.server import ServerThread
from broadcaster.sandbox.twilio import num_segments
from tests.harness import http, wait_for

SID, AUTH = "AC" + "1" * 32, "sandbox-auth-token"
SERVICE = "MG" + "a" * 32
TO, FROM = "+15551230000", "+15559870000"


@pytest.fixture(scope="module")
def fake():
    f = TwilioFake().start()
    f.add_account(SID, AUTH)
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _clean(fake):
    fake.reset()
    yield
    fake.heal()


def client(fake, token=AUTH, timeout=10.0) -> Client:
    c = Client(SID, token, environment={}, http_client=TwilioHttpClient(timeout=timeout))
    c.api.base_url = fake.url
    return c


def test_create_message_resource(fake):
    m = client(fake).messages.create(to=TO, from_=FROM, body="Sale! Reply STOP to opt out")
    assert re.fullmatch(r"SM[0-9a-f]{32}", m.sid)
    assert m.account_sid == SID
    assert m.to == TO
    assert m.from_ == FROM
    assert m.body == "Sale! Reply STOP to opt out"
    assert m.status == "queued"
    assert m.num_segments == "1"
    assert m.direction == "outbound-api"
    assert m.api_version == "2010-04-01"
    assert m.price is None
    assert m.error_code is None
    assert m.date_created.tzinfo is not None
    assert m.uri == f"/2010-04-01/Accounts/{SID}/Messages/{m.sid}.json"

    raw = fake.requests.where("messages.create")[0]
    assert raw.status == 201
    assert raw.body == {"To": TO, "From": FROM, "Body": "Sale! Reply STOP to opt out"}
    assert raw.headers["authorization"].startswith("Basic ")
    assert fake.messages == [
        {
            "sid": m.sid,
            "to": TO,
            "from_": FROM,
            "messaging_service_sid": None,
            "body": "Sale! Reply STOP to opt out",
            "status_callback": None,
            "account_sid": SID,
            "status": "queued",
            "num_segments": "1",
            "media_url": [],
        }
    ]
    fetched = client(fake).messages(m.sid).fetch()
    assert fetched.sid == m.sid
    assert fetched.body == m.body


def test_wire_format_matches_spec(fake):
    r = http.post(
        f"{fake.url}/2010-04-01/Accounts/{SID}/Messages.json",
        data={"To": TO, "MessagingServiceSid": SERVICE, "Body": "hi"},
        auth=(SID, AUTH),
    )
    assert r.status_code == 201
    body = r.json()
    assert body["from"] is None
    assert body["messaging_service_sid"] == SERVICE
    assert body["price"] is None
    assert body["date_sent"] is None
    assert parsedate_to_datetime(body["date_created"]).tzinfo is not None
    assert re.fullmatch(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000", body["date_created"])
    assert body["subresource_uris"]["media"].endswith(f"/Messages/{body['sid']}/Media.json")


def test_account_fetch_is_a_credentials_check(fake):
    account = client(fake).api.accounts(SID).fetch()
    assert account.sid == SID
    assert account.status == "active"
    with pytest.raises(TwilioRestException) as info:
        client(fake, token="wrong").api.accounts(SID).fetch()
    assert info.value.status == 401
    assert info.value.code == 20003
    raw = http.get(f"{fake.url}/2010-04-01/Accounts/{SID}.json")
    assert raw.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("x" * 160, 1),
        ("x" * 161, 2),
        ("x" * 306, 2),
        ("x" * 307, 3),
        ("[" * 80, 1),  # extension characters count double
        ("[" * 81, 2),
        ("é" * 160, 1),  # é is in the GSM-7 basic set
        ("ï" * 70, 1),  # ï is not: UCS-2
        ("ï" * 71, 2),
        ("😀" * 35, 1),  # two UTF-16 units each
        ("😀" * 36, 2),
    ],
)
def test_num_segments(body, segments):
    assert num_segments(body) == segments


def test_messaging_service_sender(fake):
    m = client(fake).messages.create(to=TO, messaging_service_sid=SERVICE, body="ünïcode " * 10)
    assert m.from_ is None
    assert m.messaging_service_sid == SERVICE
    assert m.num_segments == "2"
    assert fake.messages[0]["messaging_service_sid"] == SERVICE


def test_permanent_errors(fake):
    c = client(fake)
    fake.opt_out(TO)
    with pytest.raises(TwilioRestException) as stop:
        c.messages.create(to=TO, from_=FROM, body="x")
    assert (stop.value.status, stop.value.code) == (400, 21610)
    assert "Attempt to send to unsubscribed recipient" in stop.value.msg
    with pytest.raises(TwilioRestException) as invalid:
        c.messages.create(to="555-1234", from_=FROM, body="x")
    assert (invalid.value.status, invalid.value.code) == (400, 21211)
    assert "The 'To' number 555-1234 is not a valid phone number." in invalid.value.msg
    with pytest.raises(TwilioRestException) as no_sender:
        c.messages.create(to="+15550001111", body="x")
    assert no_sender.value.code == 21603
    with pytest.raises(TwilioRestException) as no_body:
        c.messages.create(to="+15550001111", from_=FROM)
    assert no_body.value.code == 21602
    assert fake.messages == []
    fake.opt_in(TO)
    assert c.messages.create(to=TO, from_=FROM, body="x").status == "queued"


def test_rate_limit_and_error_codes(fake):
    c = client(fake)
    fake.fail("messages", "rate_limit", retry_after=9)
    with pytest.raises(TwilioRestException) as limited:
        c.messages.create(to=TO, from_=FROM, body="x")
    assert (limited.value.status, limited.value.code) == (429, 20429)
    rec = fake.requests.where("messages.create")[0]
    assert rec.status == 429
    raw = http.post(f"{fake.url}/2010-04-01/Accounts/{SID}/Messages.json", data={"To": TO}, auth=(SID, AUTH))
    assert raw.headers["retry-after"] == "9"
    assert raw.json()["more_info"] == "https://www.twilio.com/docs/errors/20429"
    fake.fail("messages")
    with pytest.raises(TwilioRestException) as down:
        c.messages.create(to=TO, from_=FROM, body="x")
    assert (down.value.status, down.value.code) == (500, 20500)
    assert c.api.accounts(SID).fetch().sid == SID  # only the messages group fails
    fake.fail("all", "error", status=503)
    with pytest.raises(TwilioRestException) as all_down:
        c.api.accounts(SID).fetch()
    assert all_down.value.status == 503


def test_hang_is_a_raw_read_timeout(fake):
    fake.fail("messages", "hang")
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        client(fake, timeout=1.0).messages.create(to=TO, from_=FROM, body="x")
    assert time.monotonic() - started < 15  # the client's timeout, not the hang's 120 s cap
    # The fake has seen the client go (a heal before that would let the request through).
    wait_for(lambda: all(r.duration is not None for r in fake.requests), what="the fake to see it abandoned")
    fake.heal()
    assert fake.messages == []


def test_count_fails_once_then_heals(fake):
    c = client(fake)
    fake.fail("messages", "error", count=1)
    with pytest.raises(TwilioRestException):
        c.messages.create(to=TO, from_=FROM, body="x")
    assert c.messages.create(to=TO, from_=FROM, body="x").status == "queued"
    assert fake.switches == {}


@pytest.fixture
def receiver():
    got: list[tuple[str, str, dict[str, str]]] = []

    async def hook(request: Request) -> PlainTextResponse:
        form = dict(parse_qsl((await request.body()).decode()))
        got.append((str(request.url), request.headers.get("x-twilio-signature", ""), form))
        return PlainTextResponse("ok")

    server = ServerThread(Starlette(routes=[Route("/twilio/status", hook, methods=["POST"])]), name="hook")
    server.start()
    yield f"http://127.0.0.1:{server.port}/twilio/status", got
    server.stop()


def test_signed_status_callbacks(fake, receiver):
    url, got = receiver
    fake.callbacks_enabled = True
    fake.callback_delay = 0.01
    c = client(fake)
    m = c.messages.create(to=TO, from_=FROM, body="x", status_callback=url)
    wait_for(lambda: len(got) >= 3, timeout=30, interval=0.02, what="three status callbacks")
    assert [form["MessageStatus"] for _, _, form in got] == ["queued", "sent", "delivered"]
    validator = RequestValidator(AUTH)
    for cb_url, signature, form in got:
        assert cb_url == url
        assert form["MessageSid"] == m.sid
        assert form["AccountSid"] == SID
        assert validator.validate(cb_url, form, signature)
    assert not RequestValidator("other-token").validate(got[0][0], got[0][2], got[0][1])
    assert c.messages(m.sid).fetch().status == "delivered"
    # The fake records each callback's answer after the receiver has it: wait for the third.
    wait_for(lambda: len(fake.callbacks) >= 3, timeout=30, interval=0.02, what="the fake's callback log")
    assert [cb["status_code"] for cb in fake.callbacks] == [200, 200, 200]
    assert fake.messages[0]["status_callback"] == url


def test_control_api(fake):
    r = http.post(f"{fake.url}/_sandbox/fail", json={"group": "messages", "mode": "error", "count": 2})
    assert r.json()["switch"]["count"] == 2
    c = client(fake)
    for _ in range(2):
        with pytest.raises(TwilioRestException):
            c.messages.create(to=TO, from_=FROM, body="x")
    assert c.messages.create(to=TO, from_=FROM, body="x")
    http.post(f"{fake.url}/_sandbox/setup", json={"action": "opt_out", "number": TO})
    with pytest.raises(TwilioRestException) as info:
        c.messages.create(to=TO, from_=FROM, body="x")
    assert info.value.code == 21610
    state = http.get(f"{fake.url}/_sandbox/state").json()
    assert state["counts"]["messages"] == 1
    assert state["counts"]["requests"] == 4
    assert http.get(f"{fake.url}/_sandbox/items").json()["items"][0]["to"] == TO
