"""`broadcaster demo`: the whole product in two minutes, on one machine, with nothing real at risk.

It starts what `broadcaster up` starts, plus the sandbox (fake Bluesky, Mastodon, Telegram
and Twilio on loopback) and a demo brand wired to them with freshly generated keys. Then it
plays a script and shows each stage live: posts land on Bluesky; Bluesky's feeds break while
login and posting still work; the health watcher confirms the failures and goes down; the outage notice
and the next posts land on Mastodon, Telegram, SMS and RSS; the feeds heal; the watcher says
up; the held posts are backfilled to Bluesky.

Its data stays apart: key prefix `fbdemo:`, Redis database 1 on a local Redis (or its own
embedded Redis), data folder `<data dir>/demo`. Process logs go to `<data dir>/demo/demo.log`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from broadcaster.core.brands import hash_api_key, new_api_key
from broadcaster.core.settings import Settings, get_settings, reset_settings_cache
from broadcaster.ledger.keys import Keys
from broadcaster.ops.supervisor import ChildExited, Supervisor
from broadcaster.ops.up import UpOptions, start

PREFIX = "fbdemo:"
LOCAL_REDIS = "redis://127.0.0.1:6379/1"
NOTICE_WORDS = "Bluesky is having trouble"
SMS_SUBSCRIBERS = ["+15005550101", "+15005550102"]

# Fast clocks so the outage plays in seconds: a steady probe every second instead of 7. The
# breaker's rule is the shipped one (7 failed in a row trip, confirmed at 0.4 s; 12 of 20; 5
# to recover), so the demo shows what production does, only sooner after the break.
DEMO_SETTINGS = {
    "BROADCASTER_DISPATCH_INTERVAL_S": "0.5",
    "BROADCASTER_SWEEP_INTERVAL_S": "2",
    "BROADCASTER_HEALTH_PROBE_INTERVAL_S": "1",
    "BROADCASTER_HEALTH_PROBE_TIMEOUT_S": "1.5",
    "BROADCASTER_HEALTH_LATENCY_BUDGET_S": "1",
    "BROADCASTER_BACKFILL_RATE_PER_S": "2",
    "BROADCASTER_RETRY_BASE_S": "0.5",
    "BROADCASTER_RETRY_MAX_S": "3",
    "BROADCASTER_HTTP_CONNECT_TIMEOUT_S": "2",
    "BROADCASTER_HTTP_READ_TIMEOUT_S": "3",
}

TRIP_RULE = f"{Settings.model_fields['health_confirm_after'].default} failed in a row trip"

STAGES = [
    ("stack", "Start Redis, API, worker, scheduler, Flower and the fake services"),
    ("queued", "Queue 3 posts for the demo brand"),
    ("on_bluesky", "They land on Bluesky and the RSS feed"),
    ("broken", "Break Bluesky's feeds (timeline and Discover fail; login and posting still work)"),
    ("degraded", "Health watcher sees failed probes and confirms them at the fast cadence"),
    ("down", "Health watcher says: down"),
    ("notice", "Outage notice posted where the audience can still be reached"),
    ("failover", "2 more posts land on Mastodon, Telegram, SMS and RSS; Bluesky copy held"),
    ("healed", "Bluesky's feeds recover"),
    ("up", "Health watcher says: up"),
    ("backfill", "Held posts backfilled to Bluesky, in order"),
]
CALM_STAGES = {"stack", "queued", "on_bluesky"}


class Stopped(Exception):
    """Raised inside the script when Ctrl-C, SIGTERM or the --duration ends the demo."""


@dataclass
class DemoOptions:
    host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    duration: float | None = None
    outage: bool = True
    live: bool = True


@dataclass
class Stage:
    key: str
    title: str
    state: str = "waiting"  # waiting, active, done, failed
    detail: str = ""
    at: float | None = None


@dataclass
class DemoBrand:
    api_key: str
    env: dict[str, str]
    entry: dict[str, Any]


def demo_brand(sb: Any) -> DemoBrand:
    """Accounts on the fakes with generated credentials, and the brand that uses them."""
    password = secrets.token_urlsafe(12)
    mastodon_token = secrets.token_urlsafe(24)
    bot_token = f"{secrets.randbelow(10**9) + 10**9}:{secrets.token_urlsafe(27)}"
    twilio_sid, twilio_token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
    sb.bluesky.add_account("demo.test", password, display_name="Demo Coffee")
    sb.mastodon.add_token(mastodon_token, "democoffee")
    sb.telegram.add_bot(bot_token, "democoffee_bot")
    chat_id = sb.telegram.add_chat("@democoffee", title="Demo Coffee")["id"]
    sb.twilio.add_account(twilio_sid, twilio_token)
    api_key = new_api_key("demo")
    env = {
        "DEMO_BSKY_APP_PASSWORD": password,
        "DEMO_MASTODON_TOKEN": mastodon_token,
        "DEMO_TELEGRAM_BOT_TOKEN": bot_token,
        "DEMO_TWILIO_AUTH_TOKEN": twilio_token,
    }
    entry = {
        "id": "demo",
        "name": "Demo Coffee",
        "api_keys": [hash_api_key(api_key)],
        "bluesky": {
            "handle": "demo.test",
            "app_password_env": "DEMO_BSKY_APP_PASSWORD",
            "pds_url": sb.bluesky.url,
            "probe_feeds": ["at://did:plc:sandbox/app.bsky.feed.generator/whats-hot"],
        },
        "rss": {
            "title": "Demo Coffee news",
            "link": "https://demo-coffee.example/",
            "description": "Demo Coffee's announcements, also when Bluesky is down.",
        },
        "mastodon": {"instance_url": sb.mastodon.url, "access_token_env": "DEMO_MASTODON_TOKEN"},
        "telegram": {
            "bot_token_env": "DEMO_TELEGRAM_BOT_TOKEN",
            "chat_ids": [chat_id],
            "api_base_url": sb.telegram.url,
        },
        "sms": {
            "account_sid": twilio_sid,
            "auth_token_env": "DEMO_TWILIO_AUTH_TOKEN",
            "from_number": "+15005550006",
            "api_base_url": sb.twilio.url,
        },
        "routing": {
            "failover": ["mastodon", "telegram", "sms"],
            "always_on": ["rss"],
            "sms_min_priority": "high",
            "failback": "backfill",
            "lookback_minutes": 0,
        },
    }
    return DemoBrand(api_key, env, entry)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _texts(items: list[dict[str, Any]], *keys: str) -> list[str]:
    return [next((str(i[k]) for k in keys if i.get(k)), "") for i in items]


class Screen:
    """The live table (a terminal) or one line per finished stage (a pipe, a log, a test)."""

    def __init__(self, demo: Demo, live: bool):
        self.demo = demo
        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=False) if live else None
        self.printed: set[str] = set()

    def __enter__(self) -> Screen:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.update(self.render())
            self.live.__exit__(None, None, None)

    def line(self, text: str) -> None:
        if self.live:
            self.live.console.print(text)
        else:
            print(text, flush=True)

    def refresh(self) -> None:
        if self.live:
            self.live.update(self.render())
            return
        for stage in self.demo.stages:
            if stage.state in ("done", "failed") and stage.key not in self.printed:
                self.printed.add(stage.key)
                mark = "✓" if stage.state == "done" else "✗"
                print(f"demo | {mark} {stage.key}: {stage.title} — {stage.detail}", flush=True)

    def render(self) -> Group:
        d = self.demo
        stages = Table(title="Failover Broadcaster demo", expand=True, show_lines=False)
        stages.add_column("", width=2)
        stages.add_column("stage")
        stages.add_column("what happened", style="dim")
        marks = {"waiting": "·", "active": "[yellow]…[/]", "done": "[green]✓[/]", "failed": "[red]✗[/]"}
        for s in d.stages:
            when = f"+{s.at - d.t0:4.1f}s " if s.at else ""
            stages.add_row(marks[s.state], s.title, when + s.detail)
        seen = Table(title="Where the audience sees it", expand=True)
        for col in ("Bluesky health", "Bluesky", "Mastodon", "Telegram", "SMS", "RSS"):
            seen.add_column(col, justify="center")
        c = d.counts()
        colour = {"up": "green", "degraded": "yellow", "down": "red"}.get(c["health"], "white")
        seen.add_row(
            f"[{colour}]{c['health']}[/]",
            *(str(c[k]) for k in ("bluesky", "mastodon", "telegram", "sms", "rss")),
        )
        return Group(stages, seen, Panel("\n".join(d.where), title="where to look", expand=True))


class Demo:
    def __init__(self, opts: DemoOptions):
        self.opts = opts
        keys = [k for k, _ in STAGES if opts.outage or k in CALM_STAGES]
        self.stages = [Stage(k, t) for k, t in STAGES if k in keys]
        self.t0 = time.monotonic()
        self.deadline = self.t0 + opts.duration if opts.duration else None
        self.where: list[str] = []
        self.next_steps = ""
        self.sb: Any = None
        self.api: httpx.Client | None = None
        self.settings: Settings | None = None
        self.sup: Supervisor | None = None
        self.screen: Screen | None = None
        self.target = ""

    # ---- helpers -----------------------------------------------------------------------------------
    def stage(self, key: str) -> Stage:
        return next(s for s in self.stages if s.key == key)

    def begin(self, key: str, detail: str = "") -> None:
        s = self.stage(key)
        s.state, s.detail = "active", detail
        self.refresh()

    def done(self, key: str, detail: str) -> None:
        s = self.stage(key)
        s.state, s.detail, s.at = "done", detail, time.monotonic()
        self.refresh()

    def refresh(self) -> None:
        if self.screen:
            self.screen.refresh()

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll `check`; stop early on Ctrl-C/SIGTERM or when --duration runs out."""
        end = time.monotonic() + timeout
        while True:
            self._interrupted()
            result = check()
            if result:
                return result
            if time.monotonic() > end:
                raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")
            self.refresh()
            time.sleep(0.25)

    def _interrupted(self) -> None:
        if self.sup and self.sup.stopping.is_set():
            raise Stopped("stopped")
        if self.deadline and time.monotonic() > self.deadline:
            raise Stopped("--duration reached")
        if self.sup:
            self.sup.check_children()

    def counts(self) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(("bluesky", "mastodon", "telegram", "sms", "rss"), 0)
        out["health"] = "?"
        if self.sb is None:
            return out
        out["bluesky"] = len(self.sb.bluesky.posts)
        out["mastodon"] = len(self.sb.mastodon.statuses)
        out["telegram"] = len(self.sb.telegram.messages)
        out["sms"] = len(self.sb.twilio.messages)
        with contextlib.suppress(Exception):
            assert self.settings is not None  # loaded right after the sandbox starts
            out["rss"] = len(self.ledger().zrange(Keys(self.settings.key_prefix).rss("demo"), 0, -1))
            out["health"] = self.health().get("state", "?")
        return out

    def ledger(self) -> redis.Redis:
        from broadcaster.ledger.connection import get_redis

        assert self.settings is not None  # run() loads them before anything reads the ledger
        return get_redis(self.settings)

    def health(self) -> dict[str, Any]:
        assert self.api is not None  # run() opens the API client before the script
        r = self.api.get("/v1/health")
        targets = r.json().get("targets", []) if r.status_code == 200 else []
        return targets[0] if targets else {}

    def upload_image(self) -> str:
        """A poster drawn with Pillow, uploaded through `POST /v1/media`: its media id."""
        assert self.api is not None
        r = self.api.post("/v1/media", files={"file": ("poster.png", demo_poster(), "image/png")})
        if r.status_code != 201:
            raise RuntimeError(f"uploading the demo image failed: {r.status_code} {r.text}")
        return str(r.json()["id"])

    def queue(self, text: str, priority: str = "normal", image: str | None = None) -> str:
        assert self.api is not None
        body: dict[str, Any] = {"text": text, "priority": priority}
        if image is not None:
            body["media"] = [{"id": image, "alt": POSTER_ALT}]
        r = self.api.post("/v1/posts", json=body)
        if r.status_code != 202:
            raise RuntimeError(f"queueing a post failed: {r.status_code} {r.text}")
        return r.json()["id"]

    def post(self, post_id: str) -> dict[str, Any]:
        assert self.api is not None
        return self.api.get(f"/v1/posts/{post_id}").json()

    def delivery(self, post_id: str, channel: str) -> str:
        for d in self.post(post_id).get("deliveries", []):
            if d["channel"] == channel:
                return d["state"]
        return "none"

    # ---- the script --------------------------------------------------------------------------------
    def script(self) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.begin("queued")
        poster = self.upload_image()
        calm = [
            self.queue(f"Demo Coffee: fresh roast today ({stamp})", image=poster),
            self.queue(f"Demo Coffee: new seasonal blend ({stamp}) #coffee"),
            self.queue(f"Demo Coffee: open late on Friday ({stamp})"),
        ]
        self.done(
            "queued", f"{len(calm)} posts queued through the API (the first with an image and alt text)"
        )
        self.begin("on_bluesky")
        self.wait(
            lambda: all(self.post(p)["state"] == "delivered" for p in calm), 60, "the posts to be delivered"
        )
        self.done(
            "on_bluesky",
            f"{len(calm)} posts on Bluesky, {self.counts()['rss']} RSS entries; {self._image_shown(poster)}",
        )
        if not self.opts.outage:
            return

        self.sb.bluesky.fail("feeds", "error")
        self.done("broken", "getTimeline/getFeed answer 502 UpstreamFailure; createSession still 200")
        self.begin("degraded")
        self.wait(
            lambda: (
                (h := self.health()).get("state") in ("degraded", "down")
                or h.get("window", {}).get("failed", 0) > 0
            ),
            60,
            "a failed probe",
        )
        self.done("degraded", f"confirming: {TRIP_RULE}")
        self.begin("down")
        self.wait(lambda: self.health().get("effective") == "down", 60, "health to go down")
        self.done("down", "routing now sends around Bluesky")

        self.begin("failover")
        urgent = [
            self.queue(f"Demo Coffee: free refills until noon ({stamp})", "high", image=poster),
            self.queue(f"Demo Coffee: the Friday event moves to 7pm ({stamp})", "high"),
        ]
        self.begin("notice")
        self.wait(
            lambda: (
                any(NOTICE_WORDS in t for t in _texts(self.sb.mastodon.statuses, "text", "content"))
                or any(NOTICE_WORDS in t for t in _texts(self.sb.telegram.messages, "text"))
            ),
            60,
            "the outage notice",
        )
        with contextlib.suppress(TimeoutError):  # give the other notice channels a moment too
            self.wait(lambda: len(self._notice_places()) >= 3, 10, "the notice on every notice channel")
        self.done(
            "notice", "on " + ", ".join(self._notice_places()) + " (SMS carries only high-priority posts)"
        )

        def landed() -> bool:
            wanted = ("mastodon", "telegram", "sms", "rss")
            return all(self.delivery(p, c) == "delivered" for p in urgent for c in wanted)

        self.wait(landed, 90, "the outage posts on every failover channel")
        held = sum(1 for p in urgent if self.delivery(p, "bluesky") == "held")
        self.done(
            "failover",
            f"delivered on Mastodon, Telegram, SMS (to {len(SMS_SUBSCRIBERS)} subscribers) and RSS; "
            f"{_count(held, 'Bluesky copy', 'Bluesky copies')} of {len(urgent)} held for the backfill",
        )

        self.sb.bluesky.heal("feeds")
        self.done("healed", "timeline and Discover answer again")
        self.begin("up")
        self.wait(lambda: self.health().get("effective") == "up", 90, "health to come back up")
        self.done("up", "routing sends to Bluesky again")
        self.begin("backfill")
        self.wait(
            lambda: all(self.delivery(p, "bluesky") == "delivered" for p in urgent),
            90,
            "the backfill to Bluesky",
        )
        self.done("backfill", f"the {len(urgent)} held posts are now on Bluesky, in the order queued")

    def _image_shown(self, media_id: str) -> str:
        """Where the image can be seen: its public URL, and whether the feed carries it with its alt."""
        assert self.api is not None
        url = f"{self.settings.public_base_url if self.settings else ''}/media/{media_id}"
        feed = self.api.get("/feeds/demo.rss").text
        in_feed = f'url="{url}"' in feed and POSTER_ALT in feed
        return f"image at {url}" + (" (in the feed with its alt text)" if in_feed else "")

    def _notice_places(self) -> list[str]:
        places = []
        if any(NOTICE_WORDS in t for t in _texts(self.sb.mastodon.statuses, "text", "content")):
            places.append("Mastodon")
        if any(NOTICE_WORDS in t for t in _texts(self.sb.telegram.messages, "text")):
            places.append("Telegram")
        if any(NOTICE_WORDS in t for t in _texts(self.sb.twilio.messages, "body")):
            places.append("SMS")
        if any(NOTICE_WORDS in t for t in _texts(self._rss_entries(), "text")):
            places.append("RSS")
        return places

    def _rss_entries(self) -> list[dict[str, Any]]:
        from broadcaster.ledger.store import Store

        assert self.settings is not None  # run() loads them before the script
        return Store(self.ledger(), self.settings).rss_entries("demo", 50)

    # ---- set-up and tear-down ----------------------------------------------------------------------
    def run(self) -> int:
        from broadcaster.sandbox import Sandbox

        base = get_settings()
        data_dir = Path(os.environ.get("BROADCASTER_DATA_DIR", base.data_dir)) / "demo"
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = data_dir / "demo.log"
        log_file = log_path.open("w", encoding="utf-8")
        self.sup = Supervisor(out=log_file, color=False)
        self.sup.handle_signals()
        self.screen = Screen(self, self.opts.live and sys.stdout.isatty())
        code = 1
        try:
            with self.screen:
                self.screen.line(
                    f"demo | starting; process logs go to {log_path}. Ctrl-C stops everything, at any time."
                )
                self.begin("stack")
                self.sb = Sandbox.start(self.opts.host)
                brand = demo_brand(self.sb)
                brands_file = data_dir / "brands.yaml"
                brands_file.write_text(yaml.safe_dump({"brands": [brand.entry]}, sort_keys=False))
                env = self._environment(data_dir, brands_file, brand)
                os.environ.update(env)
                reset_settings_cache()
                self.settings = get_settings()
                self._clear_old_demo(data_dir)
                opts = UpOptions(self.opts.host, self.opts.api_port, self.opts.flower_port, 2, True, env)
                running = start(self.settings, self.sup, opts)
                os.environ["BROADCASTER_REDIS_URL"] = running.redis.url
                reset_settings_cache()
                self.settings = get_settings()
                self._subscribe_sms()
                self.api = httpx.Client(
                    base_url=running.api_url, headers={"Authorization": f"Bearer {brand.api_key}"}, timeout=10
                )
                self.next_steps = (
                    f"demo | what next: open the brand page {running.api_url}/b/demo, Flower "
                    f"{running.flower_url} (deliveries, notices), the feed {running.api_url}/feeds/demo.rss"
                )
                self.where = [
                    f"brand page {running.api_url}/b/demo   (what followers see during an outage)",
                    f"API docs   {running.api_url}/docs   (demo brand key: {brand.api_key})",
                    f"Flower     {running.flower_url}   "
                    f"login: {running.flower_user} / {running.flower_password}",
                    f"RSS feed   {running.api_url}/feeds/demo.rss",
                    f"metrics    {running.api_url}/metrics     health: {running.api_url}/v1/health",
                    f"fake services: {', '.join(f'{k} {v}' for k, v in self.sb.urls.items())}",
                    f"process logs: {log_path}   Redis: {running.redis.url} ({running.redis.source})",
                ]
                for line in self.where:
                    self.screen.line(f"demo | {line}")
                parts = "API, worker, probe worker, beat, Flower, 4 fakes"
                self.done("stack", f"Redis ({running.redis.source}), {parts}")
                self.script()
                reached = all(s.state == "done" for s in self.stages)
                self.screen.line(
                    f"demo | all {len(self.stages)} stages reached"
                    if reached
                    else "demo | some stages missing"
                )
                code = 0 if reached else 1
                self._linger()
        except Stopped as e:
            # Stopping where the user said (--duration, Ctrl-C) is no error; a failed stage is.
            code = 1 if any(s.state == "failed" for s in self.stages) else 0
            left = [s.key for s in self.stages if s.state != "done"]
            self._say(f"demo | {e}; stopping" + (f" before: {', '.join(left)}" if left else ""))
        except (ChildExited, TimeoutError, RuntimeError) as e:
            self._fail_active(str(e))
            self._say(f"demo | error: {e}")
            code = 1
        finally:
            self._say("demo | stopping everything")
            self.sup.stop_all()
            if self.api:
                self.api.close()
            if self.sb:
                self.sb.stop()
            log_file.close()
            self._say("demo | stopped." + (f" Process logs: {log_path}" if code else ""))
        return code

    def _say(self, text: str) -> None:
        print(text, flush=True)

    def _fail_active(self, detail: str) -> None:
        for s in self.stages:
            if s.state == "active":
                s.state, s.detail = "failed", detail.splitlines()[0][:200]
        self.refresh()

    def _linger(self) -> None:
        """After the script: keep everything running for a look around, until --duration or Ctrl-C."""
        assert self.screen is not None  # run() sets it up first
        self.screen.line(self.next_steps)
        if self.deadline:
            self.screen.line("demo | everything keeps running until --duration is reached, or Ctrl-C")
        else:
            self.screen.line(
                "demo | everything keeps running: look around, then press Ctrl-C to stop everything"
            )
        while True:
            self._interrupted()
            self.refresh()
            time.sleep(0.5)

    def _environment(self, data_dir: Path, brands_file: Path, brand: DemoBrand) -> dict[str, str]:
        env = dict(DEMO_SETTINGS)
        env.update(brand.env)
        env["BROADCASTER_BRANDS_FILE"] = str(brands_file)
        env["BROADCASTER_DATA_DIR"] = str(data_dir)
        env.setdefault("BROADCASTER_KEY_PREFIX", os.environ.get("BROADCASTER_KEY_PREFIX", PREFIX))
        if "BROADCASTER_LOCAL_REDIS_URL" not in os.environ:
            env["BROADCASTER_LOCAL_REDIS_URL"] = LOCAL_REDIS  # its own database on a local Redis
        env["BROADCASTER_PUBLIC_BASE_URL"] = f"http://{self.opts.host}:{self.opts.api_port}"
        return env

    def _clear_old_demo(self, data_dir: Path) -> None:
        """Forget an earlier demo run: its embedded Redis data, or its keys (prefix) in a shared one."""
        from broadcaster.ops import embedded_redis

        shutil.rmtree(data_dir / "redis", ignore_errors=True)
        shutil.rmtree(data_dir / "media", ignore_errors=True)  # the local blob store's images

        assert self.settings is not None  # run() loads them just before
        url = embedded_redis.configured_url() or self.settings.local_redis_url
        if not embedded_redis.ping(url):
            return
        with redis.Redis.from_url(url, socket_timeout=5) as r:
            keys = list(r.scan_iter(match=f"{self.settings.key_prefix}*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i : i + 500])

    def _subscribe_sms(self) -> None:
        from broadcaster.ledger.subscribers import Subscribers

        assert self.settings is not None  # run() loads them just before
        Subscribers(self.ledger(), self.settings, "demo").add(SMS_SUBSCRIBERS)


POSTER_ALT = "A steaming cup of coffee on a brown poster that reads: Demo Coffee, fresh roast today"


def demo_poster() -> bytes:
    """The demo's image: a small PNG drawn with Pillow (no file shipped, nothing downloaded)."""
    import io

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (600, 315), (92, 58, 33))
    draw = ImageDraw.Draw(img)
    draw.ellipse((230, 90, 370, 230), fill=(245, 240, 230))  # the cup, seen from above
    draw.ellipse((250, 110, 350, 210), fill=(60, 35, 20))  # the coffee
    draw.arc((355, 130, 405, 190), 270, 90, fill=(245, 240, 230), width=10)  # the handle
    draw.text((20, 20), "Demo Coffee", fill=(245, 240, 230))
    draw.text((20, 280), "fresh roast today", fill=(245, 240, 230))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def run_demo(opts: DemoOptions) -> int:
    return Demo(opts).run()
