"""The Telegram fake against the real python-telegram-bot Bot."""

from __future__ import annotations

import asyncio
import time

import pytest
from telegram import Bot, LinkPreviewOptions
from telegram.constants import ParseMode
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter, TimedOut
from telegram.request import HTTPXRequest

from broadcaster.ledger.tls import client_context
from broadcaster.sandbox import TelegramFake
from broadcaster.sandbox.telegram_format import EntityParseError, parse_html
from tests.harness import http, wait_for

# RetryAfter.retry_after as int is deprecated in PTB 22; the fake is not what is tested there
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

TOKEN = "123456:TEST-TOKEN"
CHANNEL = "@brand_channel"
USER_CHAT = 1001


@pytest.fixture(scope="module")
def fake():
    f = TelegramFake().start()
    f.add_bot(TOKEN, "brand_bot")
    f.add_chat(CHANNEL, title="Brand")
    f.add_chat(USER_CHAT, title="Alice")
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _clean(fake):
    fake.reset()
    yield
    fake.heal()


def send(fake, text, chat_id=CHANNEL, parse_mode=ParseMode.HTML, token=TOKEN, timeout=10.0):
    """One sendMessage through PTB. The timeout is generous (a busy machine answers slowly, and PTB's
    TimedOut is a NetworkError too); the hang test sets its own short one."""

    async def go():
        request = HTTPXRequest(
            connection_pool_size=4,
            read_timeout=timeout,
            connect_timeout=timeout,
            httpx_kwargs={"verify": client_context()},  # a fresh TLS context per bot: ~20 ms of CPU
        )
        bot = Bot(token, base_url=f"{fake.url}/bot", request=request, get_updates_request=request)
        try:
            return await bot.send_message(
                chat_id=chat_id,
                text=text,
                parse_mode=parse_mode,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
        finally:
            await bot.shutdown()

    return asyncio.run(go())


def get_me(fake, token=TOKEN):
    async def go():
        request = HTTPXRequest(
            connection_pool_size=4, read_timeout=10, httpx_kwargs={"verify": client_context()}
        )
        bot = Bot(token, base_url=f"{fake.url}/bot", request=request, get_updates_request=request)
        try:
            return await bot.get_me()
        finally:
            await bot.shutdown()

    return asyncio.run(go())


def test_get_me(fake):
    me = get_me(fake)
    assert me.id == 123456
    assert me.is_bot is True
    assert me.username == "brand_bot"
    with pytest.raises(InvalidToken):
        get_me(fake, "999:WRONG")


def test_html_is_parsed_to_plain_text_and_entities(fake):
    msg = send(fake, "<b>Sale</b> &lt;b&gt; &amp; * <a href='https://shop.example/?a=1&amp;b=2'>shop</a>")
    assert msg.text == "Sale <b> & * shop"
    assert msg.message_id == 1
    assert msg.chat.type == "channel"
    assert msg.chat.username == "brand_channel"
    assert [(e.type, e.offset, e.length) for e in msg.entities] == [("bold", 0, 4), ("text_link", 13, 4)]
    assert msg.entities[1].url == "https://shop.example/?a=1&b=2"
    [stored] = fake.messages
    assert stored["text"] == "Sale <b> & * shop"
    assert stored["raw_text"].startswith("<b>Sale</b> &lt;b&gt;")
    assert stored["parse_mode"] == "HTML"
    assert stored["token"] == TOKEN
    assert stored["chat_id"] == msg.chat.id
    assert stored["chat_ref"] == CHANNEL
    assert stored["link_preview_options"] == {"is_disabled": True}
    rec = fake.requests.where("sendMessage")[0]
    assert rec.body["chat_id"] == CHANNEL
    assert rec.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert rec.status == 200


def test_message_ids_increase_per_chat(fake):
    assert [send(fake, f"m{i}").message_id for i in range(3)] == [1, 2, 3]
    dm = send(fake, "hello", chat_id=USER_CHAT, parse_mode=None)
    assert dm.message_id == 1
    assert dm.chat.type == "private"
    assert dm.from_user.username == "brand_bot"
    numeric = send(fake, "by id", chat_id=fake.messages[0]["chat_id"])
    assert numeric.message_id == 4


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("<b>bold</i>", 'Unmatched end tag at byte offset 7, expected "</b>", found "</i>"'),
        ("<blink>x</blink>", 'Unsupported start tag "blink" at byte offset 0'),
        ("<br>", 'Unsupported start tag "br"'),
        ("1 < 2", 'Unsupported start tag "" at byte offset 2'),
        ("fish & chips", 'Character "&" at byte offset 5'),
        ("<b>never closed", 'Can\'t find end tag corresponding to start tag "b"'),
        ('<span class="x">s</span>', 'Tag "span" must have class "tg-spoiler"'),
    ],
)
def test_bad_html_is_bad_request(fake, text, fragment):
    with pytest.raises(BadRequest) as info:
        send(fake, text)
    assert "can't parse entities" in info.value.message.lower()
    assert fragment.lower() in info.value.message.lower()
    assert fake.messages == []


def test_html_parser_details():
    text, entities = parse_html(
        '😀 <tg-spoiler>s</tg-spoiler> <span class="tg-spoiler">t</span> &#x1F600;&#33; '
        '<pre><code class="language-python">x = 1</code></pre> <blockquote expandable>q</blockquote>'
        " <u>u</u><ins>i</ins><s>s</s><del>d</del><em>e</em><strong>b</strong><code>c</code>"
    )
    assert text.startswith("😀 s t 😀! x = 1 q ")
    kinds = [(e["type"], e["offset"], e["length"]) for e in entities]
    assert kinds[:3] == [("spoiler", 3, 1), ("spoiler", 5, 1), ("pre", 11, 5)]
    assert entities[2]["language"] == "python"
    assert ("expandable_blockquote", 17, 1) in kinds
    assert [e["type"] for e in entities[4:]] == [
        "underline",
        "underline",
        "strikethrough",
        "strikethrough",
        "italic",
        "bold",
        "code",
    ]
    with pytest.raises(EntityParseError):
        parse_html("&nbsp;")


def test_markdown_v2(fake):
    msg = send(
        fake,
        r"*Sale* _today_ \- 50% off\! [shop](https://ex.com/a\)b) `co\`de`",
        parse_mode=ParseMode.MARKDOWN_V2,
    )
    assert msg.text == "Sale today - 50% off! shop co`de"
    assert [(e.type, e.offset, e.length) for e in msg.entities] == [
        ("bold", 0, 4),
        ("italic", 5, 5),
        ("text_link", 22, 4),
        ("code", 27, 5),
    ]
    assert msg.entities[2].url == "https://ex.com/a)b"
    with pytest.raises(BadRequest) as info:
        send(fake, "50% off!", parse_mode=ParseMode.MARKDOWN_V2)
    assert "character '!' is reserved" in info.value.message.lower()


def test_auto_detected_entities(fake):
    msg = send(fake, "Deals at https://shop.example/x #sale by @brand_channel", parse_mode=None)
    assert [e.type for e in msg.entities] == ["url", "hashtag", "mention"]


def test_chat_errors(fake):
    with pytest.raises(BadRequest) as missing:
        send(fake, "x", chat_id=424242)
    assert missing.value.message == "Chat not found"
    with pytest.raises(BadRequest):
        send(fake, "x", chat_id="@nobody_here")
    fake.block_chat(USER_CHAT)
    with pytest.raises(Forbidden) as blocked:
        send(fake, "x", chat_id=USER_CHAT)
    assert "bot was blocked by the user" in blocked.value.message
    fake.block_chat(CHANNEL)
    with pytest.raises(Forbidden) as kicked:
        send(fake, "x")
    assert "bot is not a member of the channel chat" in kicked.value.message
    fake.unblock_chat(CHANNEL)
    assert send(fake, "back").message_id == 1
    with pytest.raises(InvalidToken):
        send(fake, "x", token="999:WRONG")


def test_length_limit_after_parsing(fake):
    assert send(fake, "<b>" + "x" * 4096 + "</b>").text == "x" * 4096
    with pytest.raises(BadRequest) as info:
        send(fake, "x" * 4097, parse_mode=None)
    assert info.value.message == "Message is too long"
    with pytest.raises(BadRequest):
        send(fake, "<b> </b>")  # empty after parsing and trimming


def test_rate_limit_is_retry_after(fake):
    fake.fail("send", "rate_limit", retry_after=7)
    with pytest.raises(RetryAfter) as info:
        send(fake, "x")
    assert info.value._retry_after.total_seconds() == 7
    raw = http.post(f"{fake.url}/bot{TOKEN}/sendMessage", data={"chat_id": CHANNEL, "text": "x"})
    assert raw.status_code == 429
    assert raw.json() == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }
    assert get_me(fake).username == "brand_bot"  # only the send group is limited


def test_error_is_network_error_not_bad_request(fake):
    fake.fail("send")
    with pytest.raises(NetworkError) as info:
        send(fake, "x")
    assert not isinstance(info.value, BadRequest)
    raw = http.post(f"{fake.url}/bot{TOKEN}/sendMessage", data={"chat_id": CHANNEL, "text": "x"})
    assert raw.status_code == 500
    assert raw.json() == {"ok": False, "error_code": 500, "description": "Internal Server Error"}


def test_hang_times_out(fake):
    fake.fail("all", "hang")
    started = time.monotonic()
    with pytest.raises(TimedOut):
        send(fake, "x", timeout=1.0)
    assert time.monotonic() - started < 15  # the client's timeout, not the hang's 120 s cap
    # The fake has seen the client go (a heal before that would let the request through).
    wait_for(lambda: all(r.duration is not None for r in fake.requests), what="the fake to see it abandoned")
    fake.heal()
    assert send(fake, "y").text == "y"
    assert [m["text"] for m in fake.messages] == ["y"]


def test_count_fails_once_then_heals(fake):
    fake.fail("send", "error", count=1, status=502)
    with pytest.raises(NetworkError) as failed:
        send(fake, "x")
    assert not isinstance(failed.value, TimedOut)  # the fake's 502, not a slow answer
    assert send(fake, "x").message_id == 1


def test_json_body_and_control_api(fake):
    r = http.post(f"{fake.url}/_sandbox/fail", json={"group": "send", "mode": "rate_limit", "retry_after": 3})
    assert r.status_code == 200
    with pytest.raises(RetryAfter):
        send(fake, "x")
    http.post(f"{fake.url}/_sandbox/heal")
    ok = http.post(
        f"{fake.url}/bot{TOKEN}/sendMessage",
        json={"chat_id": USER_CHAT, "text": "<i>json</i>", "parse_mode": "HTML"},
    ).json()
    assert ok["ok"] is True
    assert ok["result"]["entities"] == [{"type": "italic", "offset": 0, "length": 4}]
    state = http.get(f"{fake.url}/_sandbox/state").json()
    assert state["counts"]["messages"] == 1
    http.post(f"{fake.url}/_sandbox/setup", json={"action": "add_chat", "chat_id": "@second", "title": "Two"})
    assert send(fake, "to second", chat_id="@second").chat.title == "Two"
    unknown = http.post(f"{fake.url}/bot{TOKEN}/noSuchMethod")
    assert unknown.status_code == 404
