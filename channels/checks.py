"""Verify every configured channel's credentials against its service, for `broadcaster channels check`.

Each channel's `check()` makes one cheap authenticated call (Bluesky session, Mastodon
verify_credentials, Telegram getMe, Twilio account fetch); nothing is posted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broadcaster.core.brands import Brand, MissingSecret
from channels import build_channel
from channels.base import ChannelContext, ChannelError


@dataclass(frozen=True)
class CheckResult:
    brand: str
    channel: str
    ok: bool
    detail: str


def check_channel(brand: Brand, channel: str, ctx: ChannelContext) -> CheckResult:
    try:
        detail = build_channel(channel, brand, ctx).check()
    except (ChannelError, MissingSecret) as e:
        return CheckResult(brand.id, channel, False, getattr(e, "message", None) or str(e))
    except Exception as e:  # a check must report, not crash, whatever a library raises
        return CheckResult(brand.id, channel, False, f"unexpected {type(e).__name__}: {str(e)[:200]}")
    return CheckResult(brand.id, channel, True, detail)


def check_brands(brands: Iterable[Brand], ctx: ChannelContext) -> list[CheckResult]:
    return [check_channel(brand, channel, ctx) for brand in brands for channel in brand.channels]
