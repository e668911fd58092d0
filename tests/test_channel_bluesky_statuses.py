"""Bluesky errors are classified by HTTP status, not by the atproto SDK's exception class (issue 15).

The SDK raises `UnauthorizedError` for 401 and 403 and `NetworkError` for 409, 413 and 502. A 403
on createRecord is not a stale session (no password login per post), a 413 is this post's
problem (permanent, not an outage signal), a 502 is transient. The real client against the fake
PDS answering each status.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from channels.base import ChannelError, PermanentError, TransientError
from channels.bluesky import BlueskyChannel
from tests.channel_brands import unique
from tests.channel_direct import brand, context, new_post, outbound

HANDLE, PASSWORD = "statuses.test", "statuses-app-password"


@pytest.fixture
def pds(sandbox, monkeypatch) -> Iterator[object]:
    sandbox.bluesky.add_account(HANDLE, PASSWORD)
    monkeypatch.setenv("TEST_STATUSES_BSKY", PASSWORD)
    yield sandbox.bluesky
    sandbox.bluesky.heal()


def logins(fake) -> int:
    return sum(
        1
        for r in fake.requests.where("com.atproto.server.createSession")
        if (r.body or {}).get("identifier") == HANDLE
    )


def creates(fake, text: str) -> int:
    return sum(
        1
        for r in fake.requests.where("com.atproto.repo.createRecord")
        if ((r.body or {}).get("record") or {}).get("text") == text
    )


@pytest.mark.parametrize(
    ("status", "kind", "outage"),
    [(403, PermanentError, False), (413, PermanentError, False), (502, TransientError, True)],
)
def test_create_record_errors_by_status(pds, direct_redis, status, kind, outage):
    b = brand("statuses", pds.url, "TEST_STATUSES_BSKY")
    channel = BlueskyChannel(b, context(direct_redis))
    channel.send(outbound(b, unique("warm-up"), 1, *new_post()))  # logged in, session stored
    before = logins(pds)
    pds.fail("write", "error", status=status)
    text = unique(f"Bluesky {status}")

    with pytest.raises(ChannelError) as info:
        channel.send(outbound(b, text, 1, *new_post()))

    assert type(info.value) is kind, info.value
    assert info.value.outage is outage
    assert logins(pds) == before  # no password login for a post's error
    assert creates(pds, text) == 1  # asked once, not again after a login
    if status != 502:
        assert "statuses" in info.value.message  # names the brand
