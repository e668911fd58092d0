"""How one post's text becomes each channel's text: limits, links, escaping, counting. Pure functions.

Policy (documented in docs/api.md): text that does not fit a channel it may reach is
rejected at queue time with a 422 naming `text`, never cut, split into a thread or
spread over more SMS than the brand allows. `validate_for_channel` is that check; the
channels call the same shaping functions when they send, so what was validated is
what goes out.

Each channel's text is the post's variant for it when there is one (`core.models.text_for`).
`validate_for_channels` is run at queue time for every channel the post may reach: its own,
and the failover and always-on channels a reroute or the look-back mirror would add
(`core.routing.reachable_channels`).

| channel  | text sent                            | limit                                           |
|----------|--------------------------------------|-------------------------------------------------|
| bluesky  | text + link on a new line            | 300 graphemes and 3,000 bytes of UTF-8 (the     |
|          |                                      | lexicon's maxLength, checked by the PDS; the    |
|          |                                      | client library caps 3,000 code points, which    |
|          |                                      | the byte limit implies)                         |
| mastodon | text + link on a new line            | brand's `max_characters` (500): URLs count 23,  |
|          |                                      | the content warning counts too                  |
| telegram | HTML-escaped text + link as <a href> | 4096 characters (UTF-16 units) after parsing;   |
|          |                                      | with images, a caption holds 1024: a longer     |
|          |                                      | text goes as its own message (`telegram_caption`)|
| sms      | text + link, look-alikes made GSM-7  | brand's `max_segments` (GSM-7 160/153 per       |
|          | (+ each image's URL when not MMS)    | segment, UCS-2 70/67), and Twilio's 1600 chars  |
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import regex

BLUESKY_MAX_GRAPHEMES = 300
BLUESKY_MAX_BYTES = 3000  # app.bsky.feed.post text maxLength: UTF-8 bytes (atproto lexicon rules)
RSS_TITLE_CHARS = 80
MASTODON_DEFAULT_MAX = 500
MASTODON_URL_CHARS = 23  # Mastodon's characters_reserved_per_url
TELEGRAM_MAX_CHARS = 4096
TELEGRAM_MAX_CAPTION = 1024  # sendPhoto / sendMediaGroup caption, after entity parsing
SMS_MAX_BODY_CHARS = 1600  # Twilio's limit for one (concatenated) message body
SMS_DEFAULT_MAX_SEGMENTS = 3

_GRAPHEME = regex.compile(r"\X")
# What Mastodon treats as a URL (close to its Twitter-text rule): scheme, then up to the
# first space, minus trailing punctuation.
_URL = regex.compile(r"https?://[^\s<>\"]+[^\s<>\".,;:!?)\]'}]")
_REMOTE_MENTION = regex.compile(r"(@[\w.]+)@[\w.-]+\w")

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")  # sent as escape + char: two septets each
# Look-alikes that would silently switch a whole SMS to UCS-2 (70 characters a segment,
# so two to three times the cost); "\xa0" is the classic one, pasted from web pages.
_SMS_LOOKALIKES = str.maketrans(
    {
        "\xa0": " ",
        "\u2009": " ",
        "\u202f": " ",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
    }
)


def graphemes(text: str) -> int:
    """User-perceived characters (what Bluesky's 300 limit counts)."""
    return len(_GRAPHEME.findall(text))


def with_link(text: str, link: str | None) -> str:
    """The post's text with its link appended on a new line, unless the text already has it."""
    text = text.strip()
    if link and link not in text:
        return f"{text}\n{link}"
    return text


# ---- Bluesky and RSS ----------------------------------------------------------------------------
def bluesky_text(text: str, link: str | None) -> str:
    return with_link(text, link)


def rss_title(text: str) -> str:
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    if graphemes(first_line) <= RSS_TITLE_CHARS:
        return first_line
    clusters = _GRAPHEME.findall(first_line)[: RSS_TITLE_CHARS - 1]
    return "".join(clusters).rstrip() + "…"


# ---- Mastodon -----------------------------------------------------------------------------------
def mastodon_text(text: str, link: str | None) -> str:
    return with_link(text, link)


def mastodon_length(status: str, spoiler_text: str | None = None) -> int:
    """Characters as Mastodon counts them: each URL as 23, `@user@domain` as `@user`, plus the CW."""

    return graphemes(_mastodon_counted(status)) + (
        graphemes(_mastodon_counted(spoiler_text)) if spoiler_text else 0
    )


def _mastodon_counted(s: str) -> str:
    """`s` as Mastodon counts it: each URL as 23 characters, `@user@domain` as `@user`."""
    s = _URL.sub("x" * MASTODON_URL_CHARS, s)
    counted: str = _REMOTE_MENTION.sub(r"\1", s)  # `regex` has no type hints: its sub() is Any
    return counted


# ---- Telegram -----------------------------------------------------------------------------------
def telegram_html(text: str, link: str | None) -> str:
    """The message for parse_mode=HTML: the text escaped (so `<`, `&`, `*` arrive as written),
    the link as an anchor on its own line."""
    body = html.escape(text.strip(), quote=False)
    if link and link not in text:
        href = html.escape(link, quote=True)
        body = f'{body}\n<a href="{href}">{html.escape(link, quote=False)}</a>'
    return body


def telegram_length(text: str, link: str | None) -> int:
    """Length Telegram checks against 4096: the text after entity parsing, in UTF-16 units."""
    return utf16_units(with_link(text, link))


def telegram_caption(text: str, link: str | None) -> bool:
    """Whether a post with images can carry its text as the photo's caption (1024 characters);
    otherwise the text goes as its own message, within the 4096 of a text message."""
    return telegram_length(text, link) <= TELEGRAM_MAX_CAPTION


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# ---- SMS ----------------------------------------------------------------------------------------
def sms_text(text: str, link: str | None, image_links: Sequence[str] = ()) -> str:
    """Text and link (kept whole: a link cut in half is useless), look-alikes made GSM-7 when
    that makes the whole message GSM-7; a message sent as UCS-2 anyway keeps them as written.
    `image_links`: the images' URLs, each on its own line, for a brand that does not send MMS."""
    swapped = _with_images(with_link(text.translate(_SMS_LOOKALIKES), link), image_links)
    return swapped if sms_encoding(swapped) == "GSM-7" else _with_images(with_link(text, link), image_links)


def _with_images(body: str, image_links: Sequence[str]) -> str:
    return "\n".join([body, *image_links]) if image_links else body


def sms_encoding(body: str) -> str:
    """ "GSM-7" when every character is in the GSM 03.38 alphabet, else "UCS-2"."""
    return "GSM-7" if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in body) else "UCS-2"


def sms_segments(body: str) -> int:
    """How many SMS segments `body` costs: GSM-7 160 alone / 153 concatenated (extension
    characters count two), UCS-2 70 / 67 in UTF-16 units."""
    if sms_encoding(body) == "GSM-7":
        units = sum(2 if c in GSM7_EXTENDED else 1 for c in body)
        single, multi = 160, 153
    else:
        units, single, multi = utf16_units(body), 70, 67
    return 1 if units <= single else math.ceil(units / multi)


# ---- queue-time check ---------------------------------------------------------------------------
def validate_for_channel(
    channel: str, text: str, link: str | None, brand: Any = None, image_links: Sequence[str] = ()
) -> str | None:
    """Why `text` cannot go to `channel` as it is, or None if it fits.

    `brand` (a `Brand`) supplies per-brand limits (Mastodon's max_characters and content
    warning, the SMS segment cap); without it the services' defaults apply. `image_links`:
    the images' URLs an SMS carries in its text (a brand without MMS).
    """
    found = validate_for_channels((channel,), text, link, brand, image_links=image_links)
    return found[1] if found else None


def validate_for_channels(
    channels: Iterable[str],
    text: str,
    link: str | None,
    brand: Any = None,
    *,
    variants: Mapping[str, str] | None = None,
    image_links: Sequence[str] = (),
) -> tuple[str, str] | None:
    """The first of `channels` (in order) that cannot carry its text, and why; None if all can.

    A channel's text is its entry in `variants`, else `text`. The same verdicts and messages as
    `validate_for_channel` on each channel in turn, in one pass: every form of the text is
    built once, and grapheme segmentation (the costly part) runs only when a cheap bound cannot
    decide. A grapheme is at least one code point, so a text of at most N code points is at
    most N graphemes: a post well under its limits (the usual case) is never segmented; one
    near or over a limit is counted exactly.
    """
    for channel in dict.fromkeys(channels):
        own = variants.get(channel, text) if variants else text
        problem = _problem(channel, own, link, brand, image_links)
        if problem:
            return channel, problem
    return None


def _problem(
    channel: str, text: str, link: str | None, brand: Any, image_links: Sequence[str] = ()
) -> str | None:
    if channel == "bluesky":
        body = bluesky_text(text, link)
        if len(body) <= BLUESKY_MAX_GRAPHEMES:
            return None
        n = graphemes(body)
        if n > BLUESKY_MAX_GRAPHEMES:
            return (
                f"is {n} graphemes with its link; Bluesky allows {BLUESKY_MAX_GRAPHEMES} "
                "(shorten it, or leave bluesky out of channels)"
            )
        size = len(body.encode("utf-8"))
        if size > BLUESKY_MAX_BYTES:
            return (
                f"is {size} bytes of UTF-8 with its link (only {n} graphemes: combining marks or "
                f"emoji sequences); Bluesky allows {BLUESKY_MAX_BYTES} bytes"
            )
    elif channel == "mastodon":
        cfg = getattr(brand, "mastodon", None)
        limit = cfg.max_characters if cfg else MASTODON_DEFAULT_MAX
        spoiler = cfg.spoiler_text if cfg else None
        forms = [_mastodon_counted(mastodon_text(text, link))]
        if spoiler:
            forms.append(_mastodon_counted(spoiler))
        if sum(map(len, forms)) <= limit:
            return None
        n = sum(map(graphemes, forms))
        if n > limit:
            return (
                f"is {n} characters as Mastodon counts them (each link 23, content warning included); "
                f"the brand's Mastodon limit is {limit}. Long posts are not split into threads: shorten it"
            )
    elif channel == "telegram":
        n = telegram_length(text, link)
        if n > TELEGRAM_MAX_CHARS:
            return f"is {n} characters with its link; Telegram allows {TELEGRAM_MAX_CHARS}"
    elif channel == "sms":
        cfg = getattr(brand, "sms", None)
        cap = cfg.max_segments if cfg else SMS_DEFAULT_MAX_SEGMENTS
        body = sms_text(text, link, image_links)
        extra = "link and image links" if image_links else "link"
        if len(body) > SMS_MAX_BODY_CHARS:
            return f"is {len(body)} characters with its {extra}; an SMS allows {SMS_MAX_BODY_CHARS}"
        n = sms_segments(body)
        if n > cap:
            return (
                f"needs {n} SMS segments ({sms_encoding(body)}, {extra} included); the brand allows {cap} "
                "(shorten it, or avoid characters outside GSM-7 such as emoji)"
            )
    return None
