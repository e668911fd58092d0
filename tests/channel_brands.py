"""Brands with Mastodon, Telegram and SMS configured against the sandbox, for the channel tests.

Kept apart from ACME/GLOBEX/BADPASS (whose behaviour other tests rely on): the suite's
brands file gets these in addition, and the sandbox knows their tokens, bots and chats.
"""

from __future__ import annotations

import uuid

from tests.harness import BrandSpec, brand_entry, wait_for

SOCIAL = BrandSpec("social", "fb_social_test_key_0123456789abcd", "social.test", "social-app-password")
# Every credential wrong: each channel must fail permanently with a message naming the brand.
WRONGKEYS = BrandSpec("wrongkeys", "fb_wrongkeys_test_key_0123456789", "wrongkeys.test", "wrongkeys-pass")
# Telegram and SMS at realistic paces (18 messages/min per chat, 2 SMS/s).
PACED = BrandSpec("paced", "fb_paced_test_key_0123456789abcde", "paced.test", "paced-app-password")
# An SMS budget of 3 segments a day.
THRIFTY = BrandSpec("thrifty", "fb_thrifty_test_key_0123456789abc", "thrifty.test", "thrifty-app-password")

MASTODON_TOKEN = "social-mastodon-token-0123456789"
SOCIAL_BOT = "7000001:AAsocialBotToken_0123456789abcdef"
PACED_BOT = "7000002:AApacedBotToken_0123456789abcdefg"
UNKNOWN_BOT = "7000009:AAunknownBotToken_0123456789abcde"
TWILIO_SID = "AC" + "5" * 32
TWILIO_AUTH = "sandbox-twilio-auth-token-0123"
SOCIAL_CHANNEL, SOCIAL_GROUP = "@social_news", -1001000000001
PACED_CHANNEL = "@paced_news"
SENDER = "+12015550100"
SPECS = (SOCIAL, WRONGKEYS, PACED, THRIFTY)


def register(sandbox) -> None:
    """Accounts, tokens, bots and chats the sandbox must know (call once per sandbox)."""
    for spec in SPECS:
        sandbox.bluesky.add_account(spec.handle, spec.password)
    sandbox.mastodon.add_token(MASTODON_TOKEN, "social")
    sandbox.telegram.add_bot(SOCIAL_BOT, "social_bot")
    sandbox.telegram.add_bot(PACED_BOT, "paced_bot")
    sandbox.telegram.add_chat(SOCIAL_CHANNEL, title="Social news")
    sandbox.telegram.add_chat(SOCIAL_GROUP, title="Social VIP")
    sandbox.telegram.add_chat(PACED_CHANNEL, title="Paced news")
    sandbox.twilio.add_account(TWILIO_SID, TWILIO_AUTH)


def _secret(env: dict[str, str], brand: str, what: str, value: str) -> str:
    name = f"TEST_{brand.upper()}_{what}"
    env[name] = value
    return name


def entries(sandbox, env: dict[str, str]) -> list[dict]:
    """Brands-file entries; their secrets go into `env` (the worker's and the API's environment)."""

    def sms(brand: str, auth: str, **extra) -> dict:
        return {
            "account_sid": TWILIO_SID,
            "auth_token_env": _secret(env, brand, "TWILIO_AUTH", auth),
            "from_number": SENDER,
            "api_base_url": sandbox.twilio.url,
            "default_region": "US",
            **extra,
        }

    def telegram(brand: str, token: str, chats: list, **extra) -> dict:
        return {
            "bot_token_env": _secret(env, brand, "TELEGRAM_TOKEN", token),
            "chat_ids": chats,
            "api_base_url": sandbox.telegram.url,
            **extra,
        }

    def mastodon(brand: str, token: str) -> dict:
        return {
            "instance_url": sandbox.mastodon.url,
            "access_token_env": _secret(env, brand, "MASTODON_TOKEN", token),
            "spoiler_text": "Brand news",
            "language": "en",
        }

    # No outage notices: a Bluesky outage staged by the health tests must not post to these brands.
    failover = {
        "failover": ["mastodon", "telegram", "sms"],
        "sms_min_priority": "high",
        "outage_notice": None,
    }
    SOCIAL.extra.update(
        mastodon=mastodon("social", MASTODON_TOKEN),
        telegram=telegram(
            "social", SOCIAL_BOT, [SOCIAL_CHANNEL, SOCIAL_GROUP], chat_per_minute=600, chat_burst=20
        ),
        sms=sms("social", TWILIO_AUTH, rate_per_s=50, daily_segment_budget=100_000),
        routing=failover,
    )
    WRONGKEYS.extra.update(
        mastodon=mastodon("wrongkeys", "not-a-valid-mastodon-token"),
        telegram=telegram("wrongkeys", UNKNOWN_BOT, [SOCIAL_CHANNEL]),
        sms=sms("wrongkeys", "not-the-twilio-auth-token"),
        routing=failover,
    )
    PACED.extra.update(
        telegram=telegram("paced", PACED_BOT, [PACED_CHANNEL]),
        sms=sms("paced", TWILIO_AUTH, rate_per_s=2, daily_segment_budget=100_000),
        routing=failover,
    )
    THRIFTY.extra.update(sms=sms("thrifty", TWILIO_AUTH, daily_segment_budget=3), routing=failover)
    return [brand_entry(spec, sandbox, env) for spec in SPECS]


# ---- helpers for the channel tests ----------------------------------------------------------------
def auth(spec: BrandSpec) -> dict[str, str]:
    return {"Authorization": f"Bearer {spec.key}"}


def unique(text: str = "Hello") -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def queue(api, spec: BrandSpec, **body) -> dict:
    r = api.post("/v1/posts", json=body, headers=auth(spec))
    assert r.status_code == 202, r.text
    return r.json()


def final(api, spec: BrandSpec, post_id: str, timeout: float = 25) -> dict:
    """The post once none of its deliveries is pending or sending any more."""

    def check():
        r = api.get(f"/v1/posts/{post_id}", headers=auth(spec))
        assert r.status_code == 200, r.text
        body = r.json()
        return body if body["state"] not in ("scheduled", "dispatching") else None

    return wait_for(check, timeout=timeout, what=f"post {post_id} to settle")


def delivery(post: dict, channel: str) -> dict:
    return next(d for d in post["deliveries"] if d["channel"] == channel)


def set_subscribers(api, spec: BrandSpec, numbers: list[str]) -> None:
    """Make `numbers` the brand's whole subscriber list, through the API."""
    current = api.get("/v1/sms/subscribers", headers=auth(spec)).json()["numbers"]
    if current:
        r = api.request("DELETE", "/v1/sms/subscribers", json={"numbers": current}, headers=auth(spec))
        assert r.status_code == 200, r.text
    r = api.post("/v1/sms/subscribers", json={"numbers": numbers}, headers=auth(spec))
    assert r.status_code == 200, r.text
