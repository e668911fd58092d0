"""Verify every configured channel's credentials against its service, for `broadcaster channels check`.

Each channel's `check()` makes one cheap authenticated call (Bluesky session, Mastodon
verify_credentials, Telegram getMe, Twilio account fetch); nothing is posted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broadcaster.core.brands import Brand, MissingSecret, Watcher
from channels import build_channel
from channels.base import ChannelContext, ChannelError
from channels.bluesky import check_watcher


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


def check_watchers(
    watchers: Iterable[Watcher], brands: list[Brand], ctx: ChannelContext
) -> list[CheckResult]:
    """One row per watcher account: its login, and the probe feeds of the targets it watches
    read through its own PDS."""
    out = []
    for w in watchers:
        watched = [b for b in brands if "bluesky" in b.channels and w.watches(b.bluesky.target)]
        if not watched:
            continue  # it watches none of the brands checked
        feeds = sorted({f for b in watched for f in b.bluesky.probe_feeds})
        name = f"watcher:{w.id}"
        try:
            detail = check_watcher(w, feeds, ctx.settings.http_read_timeout_s)
        except (ChannelError, MissingSecret) as e:
            out.append(CheckResult(name, "bluesky", False, getattr(e, "message", None) or str(e)))
            continue
        except Exception as e:  # a check must report, not crash, whatever a library raises
            out.append(CheckResult(name, "bluesky", False, f"unexpected {type(e).__name__}: {str(e)[:200]}"))
            continue
        out.append(CheckResult(name, "bluesky", True, detail))
    return out
