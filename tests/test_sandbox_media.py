"""The fakes speak media, driven by the real client libraries: Bluesky blobs and embeds,
Mastodon's media upload v2 with asynchronous processing, Telegram photos and albums, Twilio MMS."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from atproto import Client, models
from atproto.exceptions import BadRequestError
from mastodon import Mastodon
from mastodon.errors import MastodonAPIError
from telegram import Bot, InputMediaPhoto
from telegram.constants import ParseMode
from telegram.error import BadRequest
from telegram.request import HTTPXRequest
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient

from broadcaster.ledger.tls import client_context
from broadcaster.sandbox import Sandbox
from channels.bluesky import atproto_request
from tests.harness import http
from tests.images import png

HANDLE, PASSWORD = "brand.test", "app-password"
TOKEN = "123456:TEST-TOKEN"
CHANNEL = "@brand_channel"
SID, AUTH = "AC" + "1" * 32, "auth-token"


@pytest.fixture(scope="module")
def sb():
    with Sandbox.start() as sandbox:
        yield sandbox


@pytest.fixture(autouse=True)
def _clean(sb):
    sb.reset()
    sb.bluesky.add_account(HANDLE, PASSWORD)
    sb.mastodon.add_token("tok", "brand")
    sb.mastodon.add_token("other-tok", "other")
    sb.telegram.add_bot(TOKEN, "brand_bot")
    sb.telegram.add_chat(CHANNEL, title="Brand")
    sb.twilio.add_account(SID, AUTH)
    yield
    sb.heal()


# ---------------------------------------------------------------- Bluesky
def bsky(sb) -> Client:
    client = Client(base_url=sb.bluesky.url, request=atproto_request(httpx.Timeout(2.0)))
    client.login(HANDLE, PASSWORD, fetch_bsky_profile=False)
    return client


def image_embed(blob, alt="A red square", ratio=(4, 3)):
    return models.AppBskyEmbedImages.Main(
        images=[
            models.AppBskyEmbedImages.Image(
                image=blob,
                alt=alt,
                aspect_ratio=models.AppBskyEmbedDefs.AspectRatio(width=ratio[0], height=ratio[1]),
            )
        ]
    )


def create(client, embed):
    record = models.AppBskyFeedPost.Record(text="Sale", created_at=client.get_current_time_iso(), embed=embed)
    return client.app.bsky.feed.post.create(client._session.did, record)


def test_upload_blob_answers_a_blob_ref_and_stores_the_bytes(sb):
    client = bsky(sb)
    data = png(8, 6)
    blob = client.upload_blob(data).blob
    assert blob.mime_type == "image/png"  # sniffed: atproto sends Content-Type */*
    assert blob.size == len(data)
    assert blob.ref.link.startswith("bafkrei")  # CIDv1, raw codec, sha2-256
    [stored] = sb.bluesky.blobs
    assert stored["cid"] == blob.ref.link
    assert sb.bluesky.blob_bytes(stored["did"], stored["cid"]) == data


def test_images_embed_with_alt_and_aspect_ratio_is_stored(sb):
    client = bsky(sb)
    blob = client.upload_blob(png(8, 6)).blob
    create(client, image_embed(blob))
    [post] = sb.bluesky.posts
    embed = post["record"]["embed"]
    assert embed["$type"] == "app.bsky.embed.images"
    [image] = embed["images"]
    assert image["alt"] == "A red square"
    assert (image["aspectRatio"]["width"], image["aspectRatio"]["height"]) == (4, 3)
    assert image["image"]["ref"]["$link"] == blob.ref.link


def test_embed_of_a_blob_never_uploaded_is_refused(sb):
    client = bsky(sb)
    blob = client.upload_blob(png()).blob
    sb.bluesky.reset()  # the blob is gone (as an unreferenced upload is, after a while)
    sb.bluesky.add_account(HANDLE, PASSWORD)
    client = bsky(sb)
    with pytest.raises(BadRequestError) as e:
        create(client, image_embed(blob))
    assert "Could not find blob" in e.value.response.content.message
    assert sb.bluesky.posts == []


def test_images_embed_without_alt_and_too_many_images_are_refused(sb):
    client = bsky(sb)
    blob = client.upload_blob(png()).blob
    ref = {"$type": "blob", "ref": {"$link": blob.ref.link}, "mimeType": "image/png", "size": blob.size}
    base = {"repo": client._session.did, "collection": "app.bsky.feed.post"}
    record = {"text": "x", "createdAt": client.get_current_time_iso()}
    no_alt = {"$type": "app.bsky.embed.images", "images": [{"image": ref}]}
    five = {"$type": "app.bsky.embed.images", "images": [{"image": ref, "alt": ""}] * 5}
    for embed, says in ((no_alt, 'must have the property "alt"'), (five, "more than 4")):
        r = http.post(
            f"{sb.bluesky.url}/xrpc/com.atproto.repo.createRecord",
            json={**base, "record": {**record, "embed": embed}},
            headers={"Authorization": f"Bearer {client._session.access_jwt}"},
        )
        assert r.status_code == 400
        assert says in r.json()["message"]
    assert sb.bluesky.posts == []


def test_a_blob_that_is_not_an_image_or_too_large_is_refused_in_an_embed(sb):
    client = bsky(sb)
    text_blob = client.upload_blob(b"hello, not an image").blob
    assert text_blob.mime_type == "application/octet-stream"
    with pytest.raises(BadRequestError) as e:
        create(client, image_embed(text_blob))
    assert "mimeType" in e.value.response.content.message
    big = png(4, 3) + b"\0" * 1_000_001  # still sniffed as PNG, over the 1,000,000-byte limit
    big_blob = client.upload_blob(big).blob
    with pytest.raises(BadRequestError) as e:
        create(client, image_embed(big_blob))
    assert "too large" in e.value.response.content.message


def test_external_embed_with_and_without_thumb(sb):
    client = bsky(sb)
    thumb = client.upload_blob(png(12, 6)).blob
    card = models.AppBskyEmbedExternal.External(
        uri="https://shop.example/sale", title="Sale", description="Everything half off", thumb=thumb
    )
    create(client, models.AppBskyEmbedExternal.Main(external=card))
    bare = models.AppBskyEmbedExternal.External(uri="https://shop.example/", title="Shop", description="")
    create(client, models.AppBskyEmbedExternal.Main(external=bare))
    first, second = sb.bluesky.posts
    assert first["record"]["embed"]["external"]["thumb"]["ref"]["$link"] == thumb.ref.link
    assert first["record"]["embed"]["external"]["title"] == "Sale"
    assert "thumb" not in second["record"]["embed"]["external"]


# ---------------------------------------------------------------- Mastodon
def masto(sb, token="tok") -> Mastodon:  # noqa: S107 (the fake's token)  # noqa: S107  (a fake token)
    return Mastodon(
        api_base_url=sb.mastodon.url,
        access_token=token,
        request_timeout=2.0,
        ratelimit_method="throw",
        mastodon_version="4.0.0",  # media upload v2 (3.1.4+); pinned: no instance request
        version_check_mode="created",  # "none" would leave the pinned version unread (v1 upload)
    )


def test_media_upload_v2_is_processed_asynchronously(sb):
    sb.mastodon.processing_s = 0.3
    m = masto(sb)
    media = m.media_post(png(8, 6), mime_type="image/png", description="A red square")
    assert media["url"] is None  # 202: still processing
    [upload] = sb.mastodon.requests.where("media.create")
    assert upload.path == "/api/v2/media"
    assert upload.status == 202
    assert upload.body["description"] == "A red square"
    with pytest.raises(MastodonAPIError) as e:  # attaching before it is processed
        m.status_post("Sale", media_ids=[media["id"]])
    assert "not finished processing" in str(e.value)
    deadline = time.monotonic() + 10
    while (current := m.media(media["id"]))["url"] is None:  # 206 until processed
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert current["description"] == "A red square"
    assert [r.status for r in sb.mastodon.requests.where("media.get")][-1] == 200
    status = m.status_post("Sale", media_ids=[media["id"]], idempotency_key="k1")
    assert [a["id"] for a in status["media_attachments"]] == [media["id"]]
    assert status["media_attachments"][0]["description"] == "A red square"
    again = m.status_post("Sale", media_ids=[media["id"]], idempotency_key="k1")
    assert again["id"] == status["id"]
    assert len(sb.mastodon.statuses) == 1


def test_media_ids_must_be_own_unattached_and_at_most_four(sb):
    sb.mastodon.processing_s = 0
    m, other = masto(sb), masto(sb, "other-tok")
    theirs = other.media_post(png(), mime_type="image/png")
    with pytest.raises(MastodonAPIError) as e:
        m.status_post("x", media_ids=[theirs["id"]])
    assert "not found" in str(e.value)
    mine = [m.media_post(png(), mime_type="image/png")["id"] for _ in range(5)]
    with pytest.raises(MastodonAPIError) as e:
        m.status_post("x", media_ids=mine)
    assert "more than 4" in str(e.value)
    m.status_post("x", media_ids=mine[:1])
    with pytest.raises(MastodonAPIError) as e:
        m.status_post("y", media_ids=mine[:1])
    assert "already attached" in str(e.value)


def test_media_upload_refuses_a_non_image_and_a_long_description(sb):
    m = masto(sb)
    with pytest.raises(MastodonAPIError) as e:
        m.media_post(b"not an image", mime_type="image/png")
    assert "content type is invalid" in str(e.value)
    with pytest.raises(MastodonAPIError) as e:
        m.media_post(png(), mime_type="image/png", description="x" * 1501)
    assert "too long" in str(e.value)
    assert sb.mastodon.media == []


# ---------------------------------------------------------------- Telegram
def tg(sb, use):
    async def go():
        request = HTTPXRequest(read_timeout=2.0, httpx_kwargs={"verify": client_context()})
        bot = Bot(TOKEN, base_url=f"{sb.telegram.url}/bot", request=request, get_updates_request=request)
        try:
            return await use(bot)
        finally:
            await bot.shutdown()

    return asyncio.run(go())


def test_send_photo_uploads_the_file_with_its_caption(sb):
    data = png(8, 6)
    sent = tg(sb, lambda b: b.send_photo(CHANNEL, data, caption="<b>Sale</b> now", parse_mode=ParseMode.HTML))
    assert sent.caption == "Sale now"
    assert (sent.photo[-1].width, sent.photo[-1].height) == (8, 6)
    [message] = sb.telegram.messages
    assert message["kind"] == "photo"
    assert message["photo"]["size"] == len(data)
    assert message["entities"] == [{"type": "bold", "offset": 0, "length": 4}]


def test_caption_over_1024_characters_is_refused_as_the_bot_api_does(sb):
    with pytest.raises(BadRequest, match="caption is too long"):
        tg(sb, lambda b: b.send_photo(CHANNEL, png(), caption="x" * 1025))
    sent = tg(sb, lambda b: b.send_photo(CHANNEL, png(), caption="x" * 1024))
    assert len(sent.caption) == 1024
    assert len(sb.telegram.messages) == 1


def test_send_media_group_sends_an_album(sb):
    photos = [InputMediaPhoto(png(4, 3), caption="Album"), InputMediaPhoto(png(3, 4))]
    sent = tg(sb, lambda b: b.send_media_group(CHANNEL, photos))
    assert len(sent) == 2
    assert sent[0].media_group_id == sent[1].media_group_id
    assert sent[0].caption == "Album"
    assert sent[1].caption is None
    assert [(m["photo"]["width"], m["photo"]["height"]) for m in sb.telegram.messages] == [(4, 3), (3, 4)]


def test_media_group_refuses_one_item_and_a_non_image(sb):
    with pytest.raises(BadRequest, match="2-10 items"):
        tg(sb, lambda b: b.send_media_group(CHANNEL, [InputMediaPhoto(png())]))
    with pytest.raises(BadRequest, match=r"(?i)image_process_failed"):
        tg(sb, lambda b: b.send_media_group(CHANNEL, [InputMediaPhoto(png()), InputMediaPhoto(b"nope")]))
    assert sb.telegram.messages == []


# ---------------------------------------------------------------- Twilio
def twilio(sb) -> TwilioClient:
    client = TwilioClient(SID, AUTH, environment={}, http_client=TwilioHttpClient(timeout=2.0))
    client.api.base_url = sb.twilio.url
    return client


def test_mms_with_media_urls(sb):
    urls = ["https://brand.example/media/med_1", "https://brand.example/media/med_2"]
    m = twilio(sb).messages.create(to="+15551230000", from_="+15559870000", body="Sale", media_url=urls)
    assert m.num_media == "2"
    [stored] = sb.twilio.messages
    assert stored["media_url"] == urls


def test_media_only_mms_and_bad_media_urls(sb):
    client = twilio(sb)
    client.messages.create(to="+15551230000", from_="+15559870000", media_url=["https://b.example/m.png"])
    with pytest.raises(TwilioRestException) as e:
        client.messages.create(to="+15551230000", from_="+15559870000", body="x", media_url=["ftp://x/y"])
    assert e.value.code == 21620
    with pytest.raises(TwilioRestException) as e:
        client.messages.create(
            to="+15551230000", from_="+15559870000", media_url=[f"https://b.example/{i}" for i in range(11)]
        )
    assert e.value.code == 21623
    assert len(sb.twilio.messages) == 1
