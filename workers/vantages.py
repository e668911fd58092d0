"""The extra vantage points on a Bluesky target, beside the brand's own session.

* a watcher: a reader account on another PDS (the brands file's `watchers`, its app password
  by env var name). Its session, Home timeline and the target's probe feeds, read through its
  own PDS: the audience on another PDS.
* the target's public AppView (`bluesky.appview_url`): the brand's author feed and the probe
  feeds without a session: what anyone reading the brand sees.

Each gives a `Probe` whose checks carry reason classes like the brand's; the verdicts go to
`core.health.quorum_signal`. A watcher logs in with its password only when no session is
stored, at most once per `RELOGIN_EVERY_S`; its session is kept in Redis for the next probe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
from atproto import Client, models
from atproto.exceptions import AtProtocolError

from broadcaster.core.brands import Brand, MissingSecret, Watcher, read_secret
from broadcaster.core.probe_reasons import FEED
from broadcaster.ledger.keys import Keys
from channels.bluesky import atproto_request
from workers.probing import RELOGIN_EVERY_S, Checker, Probe
from workers.runtime import Runtime

log = logging.getLogger("broadcaster.core.health")


def _client(base_url: str, timeout_s: float) -> Client:
    return Client(base_url=base_url, request=atproto_request(httpx.Timeout(timeout_s)))


Checks = list[tuple[str, str | None, Callable[[Client], object]]]


def _feed_check(uri: str) -> Callable[[Client], object]:
    return lambda c: c.app.bsky.feed.get_feed(models.AppBskyFeedGetFeed.Params(feed=uri, limit=1))


def _feed_checks(feeds: list[str]) -> Checks:
    return [(FEED, u, _feed_check(u)) for u in feeds]


def _timeline(c: Client) -> object:
    return c.app.bsky.feed.get_timeline(models.AppBskyFeedGetTimeline.Params(limit=1))


def watch(rt: Runtime, target: str, watcher: Watcher, brand: Brand, timeout_s: float) -> Probe:
    """One probe of `target` from a watcher account (the probe feeds of the target's `brand`)."""
    result = Probe(target, brand=f"watcher:{watcher.id}")
    keys = Keys(rt.settings.key_prefix)
    session_key = keys.bluesky_session(f"watcher.{watcher.id}")
    client = _client(watcher.pds_url, timeout_s)
    try:
        stored = rt.redis.get(session_key)
        try:
            if stored:
                client.login(session_string=str(stored), fetch_bsky_profile=False)
            elif rt.redis.set(keys.relogin(f"watcher.{watcher.id}"), "1", nx=True, ex=RELOGIN_EVERY_S):
                password = read_secret(watcher.app_password_env, f"watcher {watcher.id}'s app password")
                client.login(watcher.handle, password, fetch_bsky_profile=False)
            else:
                result.error = f"watcher {watcher.id}: no session, and a login was tried recently"
                return result
        except (AtProtocolError, httpx.HTTPError, MissingSecret) as e:
            result.error = f"watcher {watcher.id} cannot log in: {type(e).__name__}"
            return result
        checks: Checks = [
            ("session", None, lambda c: c.com.atproto.server.get_session()),
            (
                "timeline",
                None,
                lambda c: c.app.bsky.feed.get_timeline(models.AppBskyFeedGetTimeline.Params(limit=1)),
            ),
            *_feed_checks(brand.bluesky.probe_feeds),
        ]
        Checker(rt, timeout_s).run_checks(client, checks, result)
        if (saved := client.export_session_string()) and saved != stored:
            rt.redis.set(session_key, saved)
    except AtProtocolError:  # a refused session: forget it, the next probe logs in again
        rt.redis.delete(session_key)
        result.error = f"watcher {watcher.id}: the stored session was refused"
    finally:
        client.request.close()
    return result


def public_appview(rt: Runtime, target: str, brand: Brand, timeout_s: float) -> Probe:
    """One probe of `target` through its public AppView: the brand's author feed, the probe feeds."""
    assert brand.bluesky.appview_url is not None
    result = Probe(target, brand="appview")
    client = _client(brand.bluesky.appview_url, timeout_s)
    params = models.AppBskyFeedGetAuthorFeed.Params(actor=brand.bluesky.handle, limit=1)
    checks: Checks = [
        ("author_feed", None, lambda c: c.app.bsky.feed.get_author_feed(params)),
        *_feed_checks(brand.bluesky.probe_feeds),
    ]
    try:
        Checker(rt, timeout_s).run_checks(client, checks, result)
    finally:
        client.request.close()
    return result


Vantage = Callable[[float], Probe]  # a probe from one vantage point, given its timeout


def _watcher_vantage(rt: Runtime, target: str, w: Watcher, lead: Brand) -> Vantage:
    return lambda timeout_s: watch(rt, target, w, lead, timeout_s)


def _appview_vantage(rt: Runtime, target: str, lead: Brand) -> Vantage:
    return lambda timeout_s: public_appview(rt, target, lead, timeout_s)


def safely(fn: Vantage, target: str, name: str, timeout_s: float) -> Probe:
    """A vantage's probe; whatever it raises is a probe that could not tell, not a crash."""
    try:
        return fn(timeout_s)
    except Exception as e:
        log.warning("vantage %s of %s failed to probe", name, target, exc_info=True)
        return Probe(target, brand=name, error=f"{name}: {type(e).__name__}")


def extra_vantages(rt: Runtime, target: str, brands: list[Brand]) -> list[tuple[str, Vantage]]:
    """(name, probe function of a timeout) for each extra vantage on `target`."""
    lead = brands[0]
    out: list[tuple[str, Vantage]] = []
    for w in rt.brands().watchers:
        if w.watches(target):
            out.append((f"watcher:{w.id}", _watcher_vantage(rt, target, w, lead)))
    if lead.bluesky.appview_url:
        out.append(("appview", _appview_vantage(rt, target, lead)))
    return out
