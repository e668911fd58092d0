"""How one post's text becomes each channel's text: limits, links, counting. Pure functions.

Policy (documented in the README): text that does not fit a channel's limit is
rejected at queue time with a 422 naming `text`, never cut silently.
"""

from __future__ import annotations

import regex

BLUESKY_MAX_GRAPHEMES = 300
RSS_TITLE_CHARS = 80

_GRAPHEME = regex.compile(r"\X")


def graphemes(text: str) -> int:
    """User-perceived characters (what Bluesky's 300 limit counts)."""
    return len(_GRAPHEME.findall(text))


def with_link(text: str, link: str | None) -> str:
    """The post's text with its link appended on a new line, unless the text already has it."""
    text = text.strip()
    if link and link not in text:
        return f"{text}\n{link}"
    return text


def bluesky_text(text: str, link: str | None) -> str:
    return with_link(text, link)


def rss_title(text: str) -> str:
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    if graphemes(first_line) <= RSS_TITLE_CHARS:
        return first_line
    clusters = _GRAPHEME.findall(first_line)[: RSS_TITLE_CHARS - 1]
    return "".join(clusters).rstrip() + "…"


def validate_for_channel(channel: str, text: str, link: str | None, limits: dict) -> str | None:
    """Why `text` cannot go to `channel` as it is, or None if it fits."""
    if channel == "bluesky":
        n = graphemes(bluesky_text(text, link))
        if n > BLUESKY_MAX_GRAPHEMES:
            return (
                f"is {n} graphemes with its link; Bluesky allows {BLUESKY_MAX_GRAPHEMES} "
                "(shorten it, or leave bluesky out of channels)"
            )
    return None
