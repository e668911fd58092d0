"""The brand's public page in plain words: status, where to find the brand, which posts show."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broadcaster.api.routes.pages import _templates
from broadcaster.core import brand_page, outage
from broadcaster.core.brands import hash_api_key, parse_brands
from broadcaster.core.health import State
from broadcaster.core.models import Delivery, DeliveryState, Post

BRANDS = f"""
brands:
  - id: acme
    name: Acme Coffee
    api_keys: ["{hash_api_key("k1")}"]
    bluesky: {{handle: acme.test, app_password_env: ACME_PW}}
    rss: {{title: t, link: "https://acme.example/", description: d, language: fr}}
    mastodon: {{instance_url: "https://mastodon.example", access_token_env: ACME_MT}}
    telegram: {{bot_token_env: ACME_TG, chat_ids: [-100123, "@acmecoffee"]}}
    sms: {{account_sid: AC1, auth_token_env: ACME_TW, from_number: "+15005550006"}}
    page: {{mastodon_url: "https://mastodon.example/@acme", sms_keyword: JOIN}}
  - id: bare
    name: Bare
    api_keys: ["{hash_api_key("k2")}"]
    bluesky: {{handle: bare.test, app_password_env: BARE_PW}}
    rss: {{title: t, link: "https://bare.example/", description: d}}
    routing: {{failback: skip, failover: [rss], always_on: []}}
"""
T = datetime(2026, 12, 3, 14, 5, tzinfo=UTC)


@pytest.fixture
def brands():
    return parse_brands(BRANDS)


def test_during_an_outage_the_page_says_bluesky_has_trouble_and_where_posts_go(brands):
    s = brand_page.status(brands.require("acme"), State.down, T.timestamp())
    assert not s.working
    assert s.headline == "Bluesky is having trouble"
    assert "Read them on the channels below" in s.detail
    assert "reach Bluesky too once it is back" in s.detail
    assert "stay on the channels below" in brand_page.status(brands.require("bare"), State.down, 1).detail
    assert brand_page.when(s.since) == "3 Dec 2026, 14:05 UTC"


def test_when_bluesky_works_the_page_says_so(brands):
    assert brand_page.status(brands.require("acme"), State.up, 5).headline == "Bluesky is working"
    degraded = brand_page.status(brands.require("acme"), State.degraded, 5)
    assert degraded.working
    assert "still go there" in degraded.detail


def test_the_page_links_the_account_the_channel_the_feeds_and_the_sms_keyword(brands):
    links = {link.label: link for link in brand_page.where_to_find(brands.require("acme"), "/feeds/acme.rss")}
    assert links["Mastodon"].href == "https://mastodon.example/@acme"
    assert links["Telegram"].href == "https://t.me/acmecoffee"  # from the @name chat id
    assert links["RSS feed"].href == "/feeds/acme.rss"
    assert links["Atom feed"].href == "/feeds/acme.atom"
    assert links["SMS"].text == "Text JOIN to +15005550006"
    assert links["SMS"].href == "sms:+15005550006"
    bare = [link.label for link in brand_page.where_to_find(brands.require("bare"), "/feeds/bare.rss")]
    assert bare == ["RSS feed", "Atom feed"]


def test_a_page_url_that_is_not_http_is_refused_naming_the_field():
    from broadcaster.core.brands import BrandsFileError

    bad = BRANDS.replace('mastodon_url: "https://mastodon.example/@acme"', 'mastodon_url: "javascript:x"')
    with pytest.raises(BrandsFileError, match=r"page\.mastodon_url"):
        parse_brands(bad)


def _post(kind: str = "post") -> Post:
    return Post(id="p_1", brand="acme", text="hi", kind=kind, scheduled_at=T, created_at=T)


def test_only_posts_that_reached_someone_show_and_notices_do_not():
    out = {"rss": Delivery(channel="rss", state=DeliveryState.delivered, delivered_at=T)}
    held = {"bluesky": Delivery(channel="bluesky", state=DeliveryState.held)}
    assert brand_page.published_at(_post(), out) == T.timestamp()
    assert brand_page.published_at(_post(), held) is None
    assert brand_page.published_at(_post("notice"), out) is None


def test_the_notices_link_to_the_page(brands):
    page = brand_page.page_url("https://news.example/", "acme")
    assert page == "https://news.example/b/acme"
    text = outage.notice_text(
        brands.require("acme"), outage.OUTAGE, "https://news.example/feeds/acme.rss", page
    )
    assert text is not None
    assert text.endswith(f"Updates: {page}")


def test_the_page_escapes_text_and_shows_images_with_their_alt_text(brands):
    media = [{"id": "m_1", "alt": "A cup of coffee", "width": 640, "height": 480}]
    html = _templates.get_template("brand.html").render(
        lang="fr",
        brand=brands.require("acme"),
        status=brand_page.status(brands.require("acme"), State.down, T.timestamp()),
        links=brand_page.where_to_find(brands.require("acme"), "/feeds/acme.rss"),
        posts=[{"text": "<script>x</script>", "link": None, "at": T.timestamp(), "media": media}],
        updated=T.timestamp(),
    )
    assert '<html lang="fr">' in html
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert '<img src="/media/m_1" alt="A cup of coffee" width="640" height="480"' in html
    assert '<meta name="viewport"' in html
    assert "<main>" in html
    assert "<footer>" in html
