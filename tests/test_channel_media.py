"""Every channel sends a post's images exactly once, and Bluesky adds link cards (issue 14).

Each channel's real `send`, through its real client library (atproto, Mastodon.py,
python-telegram-bot, twilio) against the sandbox fakes, with real Redis and the local blob store
holding the images; the linked page for a card is served by a loopback server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from broadcaster.core.models import MediaRef
from broadcaster.ledger.blobs import open_blob_store
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.subscribers import Subscribers
from channels.base import ChannelContext, PermanentError, TransientError
from channels.bluesky import BlueskyChannel
from channels.mastodon import MastodonChannel
from channels.sms import SmsChannel
from channels.telegram import TelegramChannel
from tests.channel_brands import SENDER, TWILIO_AUTH, TWILIO_SID, unique
from tests.channel_direct import PREFIX, brand, context, new_post, outbound
from tests.images import png

HANDLE, PASSWORD = "media.test", "media-app-password"
BOT, CHAT = "777001:MEDIA-BOT", "@media_news"
MASTODON_TOKEN = "media-mastodon-token"
SUBSCRIBER = "+12015550191"


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def ctx(direct_redis, tmp_path) -> ChannelContext:
    return context(direct_redis, media_dir=tmp_path / "media", link_card_allow_private=True, link_cards=True)


def stored(ctx: ChannelContext, width: int, height: int, alt: str) -> MediaRef:
    """An image in the blob store, as the media API leaves it."""
    data = png(width, height)
    media_id = f"med_{unique('x').split()[-1][-10:]}{width}x{height}"
    open_blob_store(ctx.settings).put(Keys(PREFIX).media_blob(media_id), data, "image/png")
    return MediaRef(id=media_id, alt=alt, mime="image/png", width=width, height=height, size=len(data))


@pytest.fixture
def pds(sandbox, monkeypatch) -> Iterator[Any]:
    sandbox.bluesky.add_account(HANDLE, PASSWORD)
    monkeypatch.setenv("TEST_MEDIA_BSKY", PASSWORD)
    yield sandbox.bluesky
    sandbox.bluesky.heal()


def records(fake, text: str) -> list[dict[str, Any]]:
    return [p["record"] for p in fake.posts if p["text"].startswith(text)]


class Page:
    """A loopback web server with a page carrying Open Graph tags, and its image."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.hang = threading.Event()
        self.image = png(40, 21)
        page = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                page.requests.append(self.path)
                if self.path == "/slow":
                    page.hang.wait(10)
                if self.path in ("/sale", "/slow", "/broken-image"):
                    image = "/missing.png" if self.path == "/broken-image" else "/card.png"
                    body = (
                        "<html><head><title>ignored</title>"
                        '<meta property="og:title" content="Spring sale &amp; more">'
                        '<meta property="og:description" content="Everything half off">'
                        f'<meta property="og:image" content="{image}">'
                        "</head><body>hi</body></html>"
                    ).encode()
                    self._answer(200, "text/html; charset=utf-8", body)
                elif self.path == "/card.png":
                    self._answer(200, "image/png", page.image)
                else:
                    self._answer(404, "text/plain", b"not found")

            def _answer(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.hang.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def page() -> Iterator[Page]:
    p = Page()
    yield p
    p.stop()


# ---------------------------------------------------------------- Bluesky
def test_bluesky_uploads_the_images_then_one_record_with_alt_and_aspect_ratio(pds, ctx, page):
    b = brand("media", pds.url, "TEST_MEDIA_BSKY")
    media = (stored(ctx, 40, 30, "A red square"), stored(ctx, 30, 40, "A tall one"))
    text = unique("Images on Bluesky")
    blobs_before = len(pds.blobs)

    receipt = BlueskyChannel(b, ctx).send(
        outbound(b, text, 1, *new_post(), media=media, link=f"{page.url}/sale")
    )

    [record] = records(pds, text)
    assert receipt.remote_id.endswith(receipt.url.rsplit("/", 1)[-1])
    embed = record["embed"]
    assert embed["$type"] == "app.bsky.embed.images"  # images win over the link card
    assert [i["alt"] for i in embed["images"]] == ["A red square", "A tall one"]
    assert [(i["aspectRatio"]["width"], i["aspectRatio"]["height"]) for i in embed["images"]] == [
        (40, 30),
        (30, 40),
    ]
    new_blobs = pds.blobs[blobs_before:]
    assert [i["image"]["ref"]["$link"] for i in embed["images"]] == [blob["cid"] for blob in new_blobs]
    assert pds.blob_bytes(new_blobs[0]["did"], new_blobs[0]["cid"]) == png(40, 30)
    assert page.requests == []  # no card was fetched for a post with images


def test_bluesky_retry_after_a_lost_answer_makes_no_second_record(pds, ctx):
    b = brand("media", pds.url, "TEST_MEDIA_BSKY")
    channel = BlueskyChannel(b, ctx)
    channel.send(outbound(b, unique("warm-up"), 1, *new_post()))  # logged in
    media = (stored(ctx, 8, 6, "Lost answer"),)
    text = unique("Answer lost")
    post = new_post()
    pds.fail("write", "drop_after", count=1)  # the record is made, the answer never comes

    with pytest.raises(TransientError):
        channel.send(outbound(b, text, 1, *post, media=media))
    receipt = channel.send(outbound(b, text, 2, *post, media=media))

    [record] = records(pds, text)
    assert record["embed"]["images"][0]["alt"] == "Lost answer"
    creates = [
        r
        for r in pds.requests.where("com.atproto.repo.createRecord")
        if (r.body or {}).get("record", {}).get("text") == text
    ]
    assert len(creates) == 1  # the retry looked the record up instead
    assert receipt.remote_id == f"at://{creates[0].body['repo']}/app.bsky.feed.post/{creates[0].body['rkey']}"


def test_bluesky_link_card_from_open_graph_with_its_thumbnail(pds, ctx, page):
    b = brand("media", pds.url, "TEST_MEDIA_BSKY")
    text = unique("Card on Bluesky")

    receipt = BlueskyChannel(b, ctx).send(outbound(b, text, 1, *new_post(), link=f"{page.url}/sale"))

    [record] = records(pds, text)
    external = record["embed"]["external"]
    assert record["embed"]["$type"] == "app.bsky.embed.external"
    assert external["uri"] == f"{page.url}/sale"
    assert external["title"] == "Spring sale & more"
    assert external["description"] == "Everything half off"
    thumb = next(blob for blob in pds.blobs if blob["cid"] == external["thumb"]["ref"]["$link"])
    assert pds.blob_bytes(thumb["did"], thumb["cid"]) == page.image
    assert receipt.note is None


@pytest.mark.parametrize(
    ("path", "says"),
    [("/gone", "answered 404"), ("/slow", "in time"), ("/broken-image", "without its image")],
)
def test_bluesky_card_that_cannot_be_built_never_fails_the_post(
    pds, direct_redis, tmp_path, page, path, says
):
    ctx = context(
        direct_redis,
        media_dir=tmp_path,
        link_card_allow_private=True,
        link_card_timeout_s=0.5,
        link_cards=True,
    )
    b = brand("media", pds.url, "TEST_MEDIA_BSKY")
    text = unique(f"Card fails {path}")

    receipt = BlueskyChannel(b, ctx).send(outbound(b, text, 1, *new_post(), link=f"{page.url}{path}"))

    [record] = records(pds, text)
    assert receipt.note is not None
    assert says in receipt.note
    if path == "/broken-image":  # the card goes, without its picture
        assert record["embed"]["external"]["title"] == "Spring sale & more"
        assert "thumb" not in record["embed"]["external"]
    else:
        assert "embed" not in record
        assert receipt.note.startswith("sent without a link card")


def test_bluesky_card_for_a_private_address_is_refused_when_not_allowed(pds, direct_redis, tmp_path, page):
    ctx = context(
        direct_redis, media_dir=tmp_path, link_cards=True
    )  # link_card_allow_private off (the default)
    b = brand("media", pds.url, "TEST_MEDIA_BSKY")
    text = unique("Private card")

    receipt = BlueskyChannel(b, ctx).send(outbound(b, text, 1, *new_post(), link=f"{page.url}/sale"))

    [record] = records(pds, text)
    assert "embed" not in record
    assert "private or loopback" in (receipt.note or "")
    assert page.requests == []


def test_no_card_is_fetched_when_link_cards_are_off(pds, direct_redis, tmp_path, page):
    ctx = context(direct_redis, media_dir=tmp_path, link_card_allow_private=True, link_cards=False)
    b = brand("media", pds.url, "TEST_MEDIA_BSKY")
    text = unique("Cards off")

    receipt = BlueskyChannel(b, ctx).send(outbound(b, text, 1, *new_post(), link=f"{page.url}/sale"))

    [record] = records(pds, text)
    assert "embed" not in record
    assert receipt.note is None
    assert page.requests == []


def test_a_missing_blob_fails_the_post_naming_the_image(pds, ctx):
    b = brand("media", pds.url, "TEST_MEDIA_BSKY")
    ref = MediaRef(id="med_gone", alt="x", mime="image/png", width=1, height=1, size=1)
    with pytest.raises(PermanentError, match="med_gone"):
        BlueskyChannel(b, ctx).send(outbound(b, unique("No blob"), 1, *new_post(), media=(ref,)))


# ---------------------------------------------------------------- Mastodon
@pytest.fixture
def mastodon(sandbox, monkeypatch) -> Iterator[Any]:
    sandbox.mastodon.add_token(MASTODON_TOKEN, "media")
    monkeypatch.setenv("TEST_MEDIA_MASTODON", MASTODON_TOKEN)
    yield sandbox.mastodon
    sandbox.mastodon.processing_s = 0.3
    sandbox.mastodon.heal()


def mastodon_brand(fake) -> Any:
    return brand(
        "media",
        "http://127.0.0.1:9",
        "TEST_UNUSED",
        mastodon={"instance_url": fake.url, "access_token_env": "TEST_MEDIA_MASTODON"},
    )


def test_mastodon_uploads_waits_for_processing_then_posts_once(mastodon, ctx):
    mastodon.processing_s = 0.3
    b = mastodon_brand(mastodon)
    media = (stored(ctx, 8, 6, "First"), stored(ctx, 6, 8, "Second"))
    text = unique("Images on Mastodon")

    receipt = MastodonChannel(b, ctx).send(outbound(b, text, 1, *new_post(), media=media))

    [status] = [s for s in mastodon.statuses if s["text"].startswith(text)]
    assert receipt.remote_id == status["id"]
    uploaded = [m for m in mastodon.media if m["id"] in status["media_ids"]]
    assert [m["description"] for m in uploaded] == ["First", "Second"]
    assert all(m["status_id"] == status["id"] for m in uploaded)
    ids = set(status["media_ids"])
    polls = [r for r in mastodon.requests.where("media.get") if r.path.rsplit("/", 1)[-1] in ids]
    assert polls[-1].status == 200  # polled until processed
    assert {r.path for r in mastodon.requests.where("media.create")} == {"/api/v2/media"}


def test_mastodon_processing_past_the_bound_is_retried_without_a_status(mastodon, direct_redis, tmp_path):
    mastodon.processing_s = 30
    ctx = context(direct_redis, media_dir=tmp_path, mastodon_media_wait_s=0.3)
    b = mastodon_brand(mastodon)
    text = unique("Slow processing")

    with pytest.raises(TransientError) as info:
        MastodonChannel(b, ctx).send(outbound(b, text, 1, *new_post(), media=(stored(ctx, 4, 4, "x"),)))

    assert "still processing" in info.value.message
    assert info.value.outage is False
    assert [s for s in mastodon.statuses if s["text"].startswith(text)] == []


def test_mastodon_refusing_the_upload_fails_the_post_naming_the_scope(mastodon, ctx):
    b = mastodon_brand(mastodon)
    text = unique("No media scope")
    mastodon.fail("media", "error", status=403, message="This action is outside the authorized scopes")

    with pytest.raises(PermanentError) as info:
        MastodonChannel(b, ctx).send(outbound(b, text, 1, *new_post(), media=(stored(ctx, 4, 4, "x"),)))

    assert "write:media" in info.value.message
    assert [s for s in mastodon.statuses if s["text"].startswith(text)] == []


# ---------------------------------------------------------------- Telegram
@pytest.fixture
def telegram(sandbox, monkeypatch) -> Iterator[Any]:
    sandbox.telegram.add_bot(BOT, "media_bot")
    sandbox.telegram.add_chat(CHAT, title="Media news")
    monkeypatch.setenv("TEST_MEDIA_TELEGRAM", BOT)
    yield sandbox.telegram
    sandbox.telegram.heal()


def telegram_brand(fake) -> Any:
    return brand(
        "media",
        "http://127.0.0.1:9",
        "TEST_UNUSED",
        telegram={"bot_token_env": "TEST_MEDIA_TELEGRAM", "chat_ids": [CHAT], "api_base_url": fake.url},
    )


def chat_messages(fake, since: int) -> list[dict[str, Any]]:
    return [m for m in fake.messages[since:] if m["token"] == BOT]


def test_telegram_one_photo_with_its_caption(telegram, ctx):
    b = telegram_brand(telegram)
    before = len(telegram.messages)
    text = unique("Photo <caption> & co")

    receipt = TelegramChannel(b, ctx).send(outbound(b, text, 1, *new_post(), media=(stored(ctx, 8, 6, "x"),)))

    [message] = chat_messages(telegram, before)
    assert message["kind"] == "photo"
    assert message["caption"] == text  # escaped HTML, parsed back to the text as written
    assert (message["photo"]["width"], message["photo"]["height"]) == (8, 6)
    assert receipt.recipients is not None


def test_telegram_album_with_the_caption_on_the_first_photo(telegram, ctx):
    b = telegram_brand(telegram)
    before = len(telegram.messages)
    media = tuple(stored(ctx, 4 + i, 4, f"n{i}") for i in range(3))
    text = unique("Album")

    TelegramChannel(b, ctx).send(outbound(b, text, 1, *new_post(), media=media))

    messages = chat_messages(telegram, before)
    assert [m["kind"] for m in messages] == ["photo"] * 3
    assert len({m["media_group_id"] for m in messages}) == 1
    assert [m["caption"] for m in messages] == [text, "", ""]
    assert [m["photo"]["width"] for m in messages] == [4, 5, 6]


def test_telegram_text_over_the_caption_limit_goes_first_then_the_photo(telegram, ctx):
    b = telegram_brand(telegram)
    before = len(telegram.messages)
    text = unique("Long") + " " + "word " * 220  # over 1,024 characters, under 4,096

    TelegramChannel(b, ctx).send(outbound(b, text, 1, *new_post(), media=(stored(ctx, 8, 6, "x"),)))

    first, second = chat_messages(telegram, before)
    assert first["kind"] == "text"
    assert first["text"] == text.strip()
    assert second["kind"] == "photo"
    assert second["caption"] == ""


def test_telegram_images_refused_after_the_long_text_went_are_not_sent_again(telegram, ctx):
    b = telegram_brand(telegram)
    before = len(telegram.messages)
    bad = MediaRef(id="med_notanimage", alt="x", mime="image/png", width=4, height=4, size=12)
    open_blob_store(ctx.settings).put(Keys(PREFIX).media_blob(bad.id), b"not an image", "image/png")
    text = unique("Long, then refused") + " " + "word " * 220
    post = new_post()
    seen = len(telegram.requests)
    channel = TelegramChannel(b, ctx)

    with pytest.raises(PermanentError):  # the only chat failed
        channel.send(outbound(b, text, 1, *post, media=(bad,)))
    with pytest.raises(PermanentError):  # a retry does not repeat the text
        channel.send(outbound(b, text, 2, *post, media=(bad,)))

    [message] = chat_messages(telegram, before)
    assert message["kind"] == "text"
    photo_tries = [r for r in telegram.requests[seen:] if r.endpoint == "sendPhoto"]
    assert [r.status for r in photo_tries] == [400]  # tried once, refused, not tried again


# ---------------------------------------------------------------- SMS
@pytest.fixture
def twilio(sandbox, monkeypatch) -> Iterator[Any]:
    sandbox.twilio.add_account(TWILIO_SID, TWILIO_AUTH)
    monkeypatch.setenv("TEST_MEDIA_TWILIO", TWILIO_AUTH)
    yield sandbox.twilio
    sandbox.twilio.heal()


def sms_brand(fake, mms: bool) -> Any:
    return brand(
        "media",
        "http://127.0.0.1:9",
        "TEST_UNUSED",
        sms={
            "account_sid": TWILIO_SID,
            "auth_token_env": "TEST_MEDIA_TWILIO",
            "from_number": SENDER,
            "api_base_url": fake.url,
            "rate_per_s": 50,
            "mms": mms,
        },
    )


@pytest.mark.parametrize("mms", [True, False])
def test_sms_sends_mms_where_enabled_else_a_link_to_the_image(twilio, ctx, mms):
    b = sms_brand(twilio, mms)
    Subscribers(ctx.redis, ctx.settings, "media").add([SUBSCRIBER])
    ref = stored(ctx, 8, 6, "x")
    text = unique("Picture by text")
    image_url = f"http://testserver/media/{ref.id}"

    SmsChannel(b, ctx).send(outbound(b, text, 1, *new_post(), media=(ref,)))

    [message] = [m for m in twilio.messages if m["body"].startswith(text)]
    assert message["to"] == SUBSCRIBER
    if mms:
        assert message["media_url"] == [image_url]
        assert message["body"] == text
    else:
        assert message["media_url"] == []
        assert message["body"] == f"{text}\n{image_url}"
