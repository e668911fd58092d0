"""Bad input gets a clear 4xx naming what is wrong; a brand never sees another brand's posts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import ACME, BADPASS, GLOBEX, auth

pytestmark = pytest.mark.integration


def _field(r) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in r.json()["detail"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body.text"),
        ({"text": ""}, "body.text"),
        ({"text": "   "}, "body.text"),
        ({"text": "bell \x07 rings"}, "body.text"),
        ({"text": "x" * 301}, "body.text"),
        ({"text": "ok", "scheduled_at": "2026-12-01T10:00:00"}, "body.scheduled_at"),
        ({"text": "ok", "scheduled_at": "tomorrow"}, "body.scheduled_at"),
        ({"text": "ok", "channels": ["myspace"]}, "body.channels.0"),
        ({"text": "ok", "channels": ["mastodon"]}, "body.channels"),
        ({"text": "ok", "channels": []}, "body.channels"),
        ({"text": "ok", "priority": "meh"}, "body.priority"),
        ({"text": "ok", "link": "not a url"}, "body.link"),
        ({"text": "ok", "surprise": 1}, "body.surprise"),
    ],
)
def test_bad_post_bodies_get_422_naming_the_field(api, body, field):
    r = api.post("/v1/posts", json=body, headers=auth(ACME))
    assert r.status_code == 422, r.text
    assert field in _field(r)


def test_a_time_more_than_a_year_ahead_is_refused(api):
    far = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    r = api.post("/v1/posts", json={"text": "ok", "scheduled_at": far}, headers=auth(ACME))
    assert r.status_code == 422
    assert "body.scheduled_at" in _field(r)


def test_missing_and_wrong_keys_get_401(api):
    assert api.post("/v1/posts", json={"text": "x"}).status_code == 401
    r = api.get("/v1/posts", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


def test_not_json_gets_415_and_a_huge_body_413(api):
    r = api.post("/v1/posts", content=b"text=hi", headers=auth(ACME) | {"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = api.post(
        "/v1/posts",
        content=b"{" + b" " * 70_000 + b"}",
        headers=auth(ACME) | {"Content-Type": "application/json"},
    )
    assert r.status_code == 413
    r = api.post("/v1/posts", content=b"\xff\xfe{", headers=auth(ACME) | {"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "body" in r.json()["detail"]


def test_a_brand_cannot_read_edit_cancel_or_list_another_brands_post(api):
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    pid = api.post("/v1/posts", json={"text": "acme only", "scheduled_at": later}, headers=auth(ACME)).json()[
        "id"
    ]
    assert api.get(f"/v1/posts/{pid}", headers=auth(GLOBEX)).status_code == 404
    assert api.patch(f"/v1/posts/{pid}", json={"text": "x"}, headers=auth(GLOBEX)).status_code == 404
    assert api.delete(f"/v1/posts/{pid}", headers=auth(GLOBEX)).status_code == 404
    listed = api.get("/v1/posts?limit=200", headers=auth(GLOBEX)).json()["items"]
    assert pid not in [p["id"] for p in listed]
    assert api.get(f"/v1/posts/{pid}", headers=auth(ACME)).status_code == 200


def test_listing_is_newest_first_filters_by_state_and_pages_with_a_cursor(api):
    later = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    ids = [
        api.post("/v1/posts", json={"text": f"page {i}", "scheduled_at": later}, headers=auth(GLOBEX)).json()[
            "id"
        ]
        for i in range(5)
    ]
    api.delete(f"/v1/posts/{ids[0]}", headers=auth(GLOBEX))
    page1 = api.get("/v1/posts?limit=2&state=scheduled", headers=auth(GLOBEX)).json()
    assert [p["id"] for p in page1["items"]] == [ids[4], ids[3]]
    page2 = api.get(
        f"/v1/posts?limit=2&state=scheduled&cursor={page1['next_cursor']}", headers=auth(GLOBEX)
    ).json()
    assert [p["id"] for p in page2["items"]] == [ids[2], ids[1]]
    canceled = api.get("/v1/posts?state=canceled", headers=auth(GLOBEX)).json()["items"]
    assert ids[0] in [p["id"] for p in canceled]
    assert api.get("/v1/posts?cursor=garbage!", headers=auth(GLOBEX)).status_code == 422
    assert api.get("/v1/posts?state=nonsense", headers=auth(GLOBEX)).status_code == 422


def test_an_unknown_post_is_404_and_an_unknown_feed_too(api):
    assert api.get("/v1/posts/p_doesnotexist", headers=auth(ACME)).status_code == 404
    assert api.get("/feeds/nobody.rss").status_code == 404


def test_the_openapi_document_and_healthz_answer(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    spec = api.get("/openapi.json").json()
    assert "/v1/posts" in spec["paths"]
    too_big = {
        path: spec["paths"][path]["post"]["responses"]["413"]["description"]
        for path in ("/v1/posts", "/v1/media")
    }
    assert too_big["/v1/posts"] == "The body is larger than 64 KiB"
    assert too_big["/v1/media"].startswith(f"The body is larger than {15_000_000 + 65536:,} bytes")


def test_an_event_cursor_beyond_64_bits_is_a_422_not_a_redis_error(api):
    r = api.get("/v1/events?after=2572067515-405533592068281807780340844959389", headers=auth(ACME))
    assert r.status_code == 422
    assert "query.after" in _field(r)


def test_a_filtered_list_returns_every_match_page_by_page(api, stack, monkeypatch):
    """Three canceled posts older than three requests' worth of scheduled ones: following the
    cursors finds all three (a single request reads at most LIST_SCAN_BUDGET posts, then answers a
    cursor). The budget is lowered to 200 (two of the route's 100-post reads) so the test writes
    600 posts, not 6,000: the same cuts, a tenth of the ledger writes."""
    from broadcaster.api.routes import posts as posts_route
    from broadcaster.core.ids import new_post_id
    from broadcaster.core.models import Delivery, Post

    monkeypatch.setattr(posts_route, "LIST_SCAN_BUDGET", 200)
    store = stack.store()
    far = datetime.now(UTC) + timedelta(days=300)  # never due during the suite
    ids: list[str] = []
    try:
        for i in range(3 * posts_route.LIST_SCAN_BUDGET + 3):
            created = datetime.now(UTC) - timedelta(seconds=10_000 - i)
            post = Post(
                id=new_post_id(), brand=BADPASS.id, text=f"many {i}", scheduled_at=far, created_at=created
            )
            store.create_post(post, [Delivery(channel="rss")])
            ids.append(post.id)
        for pid in ids[:3]:  # the oldest three: listed last, newest first
            assert api.delete(f"/v1/posts/{pid}", headers=auth(BADPASS)).status_code == 200
        found: list[str] = []
        cursor, requests = None, 0
        while True:
            params = {"state": "canceled", "limit": 10} | ({"cursor": cursor} if cursor else {})
            page = api.get("/v1/posts", params=params, headers=auth(BADPASS)).json()
            requests += 1
            found += [p["id"] for p in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert found == [ids[2], ids[1], ids[0]]
        assert requests > 3  # the scan was cut into several requests, each with a cursor
    finally:
        pipe = store.r.pipeline(transaction=False)
        for pid in ids:
            pipe.zrem(store.keys.sched, pid)
            pipe.zrem(store.keys.brand_posts(BADPASS.id), pid)
            pipe.delete(store.post_key(pid))
        pipe.execute()
