"""How many Redis round trips the worker makes per delivery, per channel, on the happy path.

The worker runs in this process: `workers.tasks.deliver_many`, the task body Celery runs for a
dispatch's batch, against real Redis and the sandbox fakes through the real client libraries.
Nothing of ours is replaced: the posts are queued through the API, claimed and dispatched by
the dispatcher's own functions, and delivered by the task. The one addition is in redis-py:
the worker's connection pool makes `CountingConnection`s (redis-py's `Connection`, passing
everything through), which log each round trip: a command, or a pipeline (one send, one read).

Counted apart, as upkeep of a connection rather than of a delivery: a connection's set-up
(HELLO, SELECT, CLIENT ...), redis-py's health-check PING (a connection idle for 15 s), and
the clock's `TIME` resync (once a minute per process, `broadcaster.ledger.clock`). Celery's
own broker traffic is not in the count: the task is called here, not fetched from a queue
(`python -m bench throughput` reports every command Redis ran, the broker's included).

The budget (issue 18): at most 4 round trips per delivery on the happy path, every channel,
with one recipient per fan-out channel, as a brand with one Telegram chat and one SMS
subscriber has (and as the throughput benchmark has). A fan-out to several recipients keeps
its per-recipient markers and is held to the same budget (a run sends to a batch of them).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import redis

from broadcaster.ledger.keys import Keys
from broadcaster.ledger.recipients import Recipients
from tests.channel_brands import TWILIO_AUTH, TWILIO_SID
from tests.harness import FAST_SETTINGS, REDIS_URL, BrandSpec, brand_entry, own_prefix, write_brands

pytestmark = pytest.mark.integration

CHANNELS = ("bluesky", "mastodon", "telegram", "sms", "rss")
BATCH = 10  # posts per deliver_many (a dispatch hands out up to workers.tasks.DELIVER_BATCH)
BUDGET = 4  # round trips per delivery (issue 18)
UPKEEP = frozenset({"HELLO", "SELECT", "CLIENT", "AUTH", "PING", "TIME"})

SOLO = BrandSpec("trips", "fb_trips_test_key_0123456789abcdef", "trips.test", "trips-app-password")
FAN = BrandSpec("tripsfan", "fb_tripsfan_test_key_0123456789ab", "tripsfan.test", "tripsfan-password")
SOLO_BOT = "7000031:AAtripsBotToken_0123456789abcdefg"
FAN_BOT = "7000032:AAtripsfanBotToken_0123456789abcd"
SOLO_CHAT = "@trips_news"
FAN_CHATS = ["@tripsfan_news", "@tripsfan_more", "@tripsfan_extra"]
SOLO_NUMBERS = ["+12025550141"]
FAN_NUMBERS = ["+12025550151", "+12025550152", "+12025550153"]


# ---- counting, inside redis-py ---------------------------------------------------------------------
def _commands(packed: bytes) -> list[tuple[str, str]]:
    """Each command in a packed request (RESP arrays of bulk strings): its name and first argument."""
    commands, i = [], 0
    while i < len(packed) and packed[i : i + 1] == b"*":
        end = packed.index(b"\r\n", i)
        count, i = int(packed[i + 1 : end]), end + 2
        parts = []
        for n in range(count):
            end = packed.index(b"\r\n", i)
            size, i = int(packed[i + 1 : end]), end + 2
            if n < 2:
                parts.append(packed[i : i + size].decode(errors="replace"))
            i += size + 2
        commands.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
    return commands


class CountingConnection(redis.Connection):
    """redis-py's connection, logging each send (one round trip) with the commands it carries,
    and each command with its first argument (`sent`: a key, mostly)."""

    trips: list[tuple[str, ...]] = []
    sent: list[tuple[str, str]] = []

    def send_packed_command(self, command, check_health=True):
        data = command.encode() if isinstance(command, str) else b"".join(command)
        commands = _commands(data)
        type(self).trips.append(tuple(name for name, _ in commands))
        type(self).sent.extend(commands)
        return super().send_packed_command(command, check_health)


@dataclass
class Tally:
    deliveries: int
    trips: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def work(self) -> list[tuple[str, ...]]:
        return [t for t in self.trips if not set(t) <= UPKEEP]

    @property
    def upkeep(self) -> list[tuple[str, ...]]:
        return [t for t in self.trips if set(t) <= UPKEEP]

    def per_delivery(self) -> float:
        return len(self.work) / self.deliveries

    def shape(self) -> str:
        """Each kind of round trip, how often per delivery (a pipeline as `[A+B]`)."""
        kinds = Counter(t[0] if len(t) == 1 else "[" + "+".join(t) + "]" for t in self.work)
        return ", ".join(f"{k} x{n / self.deliveries:g}" for k, n in kinds.most_common())


# ---- the deployment: this process is its worker ------------------------------------------------------
@dataclass
class Deployment:
    rt: object
    api: object
    prefix: str
    dispatched: Tally | None = None  # the round trips of the last dispatch, per post (reported)

    def queue(
        self,
        spec: BrandSpec,
        n: int,
        channels: tuple[str, ...] = CHANNELS,
        handed_out: tuple[str, ...] = CHANNELS,
    ) -> list[str]:
        """`n` posts (to all five channels by default) through the API, due a moment from now,
        then claimed and dispatched as the dispatcher does; the deliveries of `handed_out` are
        `pending` and in flight."""
        from workers import dispatch

        due = datetime.now(UTC) + timedelta(seconds=1)  # not due at once: no kick to the broker
        ids = []
        for i in range(n):
            r = self.api.post(
                "/v1/posts",
                json={
                    "text": f"Round trips {i}",
                    "channels": list(channels),
                    "priority": "high",
                    "scheduled_at": due.isoformat(),
                },
                headers={"Authorization": f"Bearer {spec.key}"},
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        store = self.rt.store
        while store.now() < due.timestamp():
            time.sleep(0.05)
        claimed = store.claim_due(store.now(), 1000, lease_s=60)
        assert set(ids) <= set(claimed)
        handed: list[tuple[str, str]] = []
        CountingConnection.trips = []
        dispatch.dispatch_posts(self.rt, claimed, lambda post_id, channel: handed.append((post_id, channel)))
        self.dispatched = Tally(len(claimed), list(CountingConnection.trips))
        assert {(p, c) for p in ids for c in handed_out} <= set(handed)
        return ids

    def deliver(self, channel: str, ids: list[str]) -> Tally:
        """`deliver_many` for these posts on one channel, every round trip it made logged."""
        from workers.tasks import deliver_many

        CountingConnection.trips, CountingConnection.sent = [], []
        done = deliver_many(channel, ids)
        tally = Tally(len(ids), list(CountingConnection.trips))
        assert done == len(ids)
        for post_id in ids:  # every guarantee kept: the record, and each recipient's own
            loaded = self.rt.store.load(post_id)
            assert loaded is not None
            d = loaded[1][channel]
            assert d.state == "delivered", f"{channel}: {d}"
            if channel in ("telegram", "sms"):
                rc = Recipients(self.rt.redis, self.rt.settings, post_id, channel)
                assert {e["state"] for e in rc.entries().values()} == {"sent"}
                assert rc.counts()["sent"] == rc.total() == d.recipients["_summary"]["sent"]
        return tally


def _brands(sandbox, secrets: dict[str, str]) -> list[dict]:
    entries = []
    for spec, bot, chats in ((SOLO, SOLO_BOT, [SOLO_CHAT]), (FAN, FAN_BOT, FAN_CHATS)):
        env_id = spec.id.upper()
        secrets[f"TEST_{env_id}_MASTODON"] = f"{spec.id}-mastodon-token-0123456789"
        secrets[f"TEST_{env_id}_TELEGRAM"] = bot
        secrets[f"TEST_{env_id}_TWILIO"] = TWILIO_AUTH
        entry = brand_entry(spec, sandbox, secrets)
        entry |= {
            "mastodon": {"instance_url": sandbox.mastodon.url, "access_token_env": f"TEST_{env_id}_MASTODON"},
            # Pacing far above what the test sends: the happy path, every token granted.
            "telegram": {
                "bot_token_env": f"TEST_{env_id}_TELEGRAM",
                "chat_ids": chats,
                "api_base_url": sandbox.telegram.url,
                "chat_per_minute": 1_000_000,
                "chat_burst": 10_000,
                "bot_per_s": 100_000,
            },
            "sms": {
                "account_sid": TWILIO_SID,
                "auth_token_env": f"TEST_{env_id}_TWILIO",
                "from_number": "+12015550100",
                "api_base_url": sandbox.twilio.url,
                "rate_per_s": 100_000,
                "daily_segment_budget": 100_000_000,
            },
            "routing": {"failover": ["mastodon", "telegram", "sms"], "outage_notice": None},
        }
        sandbox.bluesky.add_account(spec.handle, spec.password)
        sandbox.mastodon.add_token(secrets[f"TEST_{env_id}_MASTODON"], spec.id)
        sandbox.telegram.add_bot(bot, f"{spec.id}_bot")
        for chat in chats:
            sandbox.telegram.add_chat(chat, title=chat)
        entries.append(entry)
    return entries


@pytest.fixture
def deployment(redis_available, sandbox, tmp_path, monkeypatch) -> Iterator[Deployment]:
    from fastapi.testclient import TestClient

    from broadcaster.api import create_app
    from broadcaster.core.settings import reset_settings_cache
    from broadcaster.ledger.subscribers import Subscribers
    from workers.runtime import reset_runtime, runtime

    prefix = own_prefix("trips")
    secrets: dict[str, str] = {}
    brands_file = tmp_path / "brands.yaml"
    write_brands(brands_file, _brands(sandbox, secrets))
    env = FAST_SETTINGS | secrets | {"BROADCASTER_KEY_PREFIX": prefix}
    env |= {"BROADCASTER_BRANDS_FILE": str(brands_file), "BROADCASTER_MEDIA_DIR": str(tmp_path / "media")}
    env |= {"BROADCASTER_SEND_LEASE_S": "60"}  # no lease renewal in the count: sends take milliseconds
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _clean(redis_available, prefix)
    reset_settings_cache()
    reset_runtime()
    rt = runtime()
    assert rt.settings.redis_url == REDIS_URL
    # The worker's pool makes counting connections from now on (the ones it had are dropped).
    pool = rt.redis.connection_pool
    pool.connection_class = CountingConnection
    pool.reset()
    Subscribers(rt.redis, rt.settings, SOLO.id).add(SOLO_NUMBERS)
    Subscribers(rt.redis, rt.settings, FAN.id).add(FAN_NUMBERS)
    try:
        with TestClient(create_app()) as api:
            yield Deployment(rt, api, prefix)
    finally:
        reset_runtime()
        reset_settings_cache()
        _clean(redis_available, prefix)


def _clean(r: redis.Redis, prefix: str) -> None:
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i : i + 1000])


def _measure(deployment: Deployment, spec: BrandSpec) -> dict[str, Tally]:
    """Warm up (scripts loaded, sessions and clients made), then one batch per channel."""
    warm = deployment.queue(spec, 2)
    for channel in CHANNELS:
        deployment.deliver(channel, warm)
    ids = deployment.queue(spec, BATCH)
    tallies = {channel: deployment.deliver(channel, ids) for channel in CHANNELS}
    return tallies | {"(dispatch)": deployment.dispatched} if deployment.dispatched else tallies


def _report(title: str, tallies: dict[str, Tally]) -> str:
    lines = [title]
    for channel, t in tallies.items():
        unit = "per delivery" if channel in CHANNELS else "per post"
        lines.append(f"  {channel:9} {t.per_delivery():5.2f} {unit}: {t.shape()}")
        if t.upkeep:
            lines.append(f"  {'':9} upkeep (not counted): {Counter(x for u in t.upkeep for x in u)}")
    return "\n".join(lines)


def _check(tallies: dict[str, Tally], title: str) -> None:
    report = _report(f"Redis round trips per delivery ({title}):", tallies)
    print(report)
    over = {c: t.per_delivery() for c, t in tallies.items() if c in CHANNELS and t.per_delivery() > BUDGET}
    assert not over, report


def test_a_delivery_takes_at_most_four_round_trips_on_every_channel(deployment):
    _check(_measure(deployment, SOLO), "one chat, one subscriber")


def test_a_fan_out_to_a_few_recipients_takes_no_more_round_trips(deployment):
    _check(_measure(deployment, FAN), f"{len(FAN_CHATS)} chats, {len(FAN_NUMBERS)} subscribers")


def test_a_rerouted_batch_reads_its_targets_health_once(deployment):
    """Bluesky down: each rerouted delivery asks whether the brand's outage notice must go out
    first, which reads the target's health. A batch reads it once (a read that says the target
    is out is taken as it is), where each delivery of a backlog read it again."""
    rt = deployment.rt
    brand = rt.brands().require(SOLO.id)
    r = deployment.api.post(
        f"/v1/health/{brand.bluesky.target}/override",
        json={"mode": "down", "reason": "round trips of a rerouted batch"},
        headers={"Authorization": f"Bearer {FAST_SETTINGS['BROADCASTER_ADMIN_API_KEY']}"},
    )
    assert r.status_code == 200, r.text
    health_key = Keys(deployment.prefix).health(brand.bluesky.target)
    rerouted = {"channels": ("bluesky", "mastodon"), "handed_out": ("mastodon",)}  # Bluesky held
    warm = deployment.queue(SOLO, 2, **rerouted)
    deployment.deliver("mastodon", warm)
    ids = deployment.queue(SOLO, BATCH, **rerouted)
    for post_id in ids:
        assert rt.store.load(post_id)[0].rerouted_at is not None  # the dispatcher rerouted it
    tally = deployment.deliver("mastodon", ids)
    reads = [c for c in CountingConnection.sent if c == ("HGETALL", health_key)]
    print(_report("Redis round trips per rerouted delivery:", {"mastodon": tally}))
    assert len(reads) == 1, f"{len(reads)} reads of {health_key} for {BATCH} deliveries"
    _check({"mastodon": tally}, "rerouted")
