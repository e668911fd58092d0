"""Telegram Bot API message formatting, as the real ``sendMessage`` applies it.

Imitates the server side of https://core.telegram.org/bots/api#formatting-options:
``parse_mode=HTML`` (tags b, strong, i, em, u, ins, s, strike, del, a href, code, pre,
tg-spoiler, span class="tg-spoiler", blockquote [expandable], tg-emoji; entities &lt; &gt;
&amp; &quot; and numeric ones) and ``MarkdownV2`` / legacy ``Markdown``. Produces the plain
text plus ``MessageEntity`` dicts with UTF-16 offsets; raises ``EntityParseError`` with a
message in the style of the real "can't parse entities: ..." errors.
"""

from __future__ import annotations

import re
from typing import Any

ENTITY_NAMES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
HTML_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
MDV2_RESERVED = set("_*[]()~`>#+-=|{}.!")
AUTO = [
    ("url", re.compile(r"\bhttps?://[^\s<>\"]+[^\s<>\".,;:!?)\]'}]")),
    ("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}\b")),
    ("mention", re.compile(r"(?<![\w@])@[A-Za-z]\w{3,31}\b")),
    ("hashtag", re.compile(r"(?<![\w#])#\w*[^\W\d]\w*")),
    ("cashtag", re.compile(r"(?<![\w$])\$[A-Z]{3,8}\b")),
    ("bot_command", re.compile(r"(?<![\w/])/[A-Za-z]\w{0,31}(?:@[A-Za-z]\w{3,31})?")),
]
NO_AUTO_INSIDE = {"code", "pre", "text_link", "url", "email", "mention", "text_mention"}


class EntityParseError(ValueError):
    """The text could not be parsed; str(e) is the part after "can't parse entities: "."""


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class _Builder:
    def __init__(self, source: str) -> None:
        self.source = source
        self.parts: list[str] = []
        self.pos16 = 0
        self.entities: list[dict[str, Any]] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.pos16 += utf16_len(text)

    def entity(self, kind: str, start: int, **extra: Any) -> None:
        if self.pos16 > start:
            self.entities.append({"type": kind, "offset": start, "length": self.pos16 - start, **extra})

    def byte_offset(self, index: int) -> int:
        return len(self.source[:index].encode("utf-8"))

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _decode_entity(text: str, i: int) -> tuple[str, int] | None:
    """An HTML entity at ``text[i] == '&'``: (character, index after ';') or None."""
    m = re.match(r"&(?:#(\d{1,7})|#[xX]([0-9a-fA-F]{1,6})|([a-zA-Z]{2,8}));", text[i:])
    if not m:
        return None
    if m.group(3):
        ch = ENTITY_NAMES.get(m.group(3))  # case-sensitive, like Telegram
        return (ch, i + m.end()) if ch else None
    code = int(m.group(1)) if m.group(1) else int(m.group(2), 16)
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return None
    return chr(code), i + m.end()


def parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    b = _Builder(text)
    stack: list[dict[str, Any]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "&":
            decoded = _decode_entity(text, i)
            if decoded is None:
                raise EntityParseError(
                    f'Character "&" at byte offset {b.byte_offset(i)} must be escaped as "&amp;"'
                )
            b.add(decoded[0])
            i = decoded[1]
            continue
        if c != "<":
            j = i
            while j < n and text[j] not in "<&":
                j += 1
            b.add(text[i:j])
            i = j
            continue
        begin = i
        if i + 1 < n and text[i + 1] == "/":  # end tag
            close = text.find(">", i)
            if close == -1:
                raise EntityParseError(f"Unclosed end tag at byte offset {b.byte_offset(begin)}")
            name = text[i + 2 : close].strip().lower()
            if not stack:
                raise EntityParseError(f"Unexpected end tag at byte offset {b.byte_offset(begin)}")
            top = stack[-1]
            if name != top["tag"]:
                raise EntityParseError(
                    f"Unmatched end tag at byte offset {b.byte_offset(begin)}, "
                    f'expected "</{top["tag"]}>", found "</{name}>"'
                )
            stack.pop()
            _close_html(b, top, stack)
            i = close + 1
            continue
        j = i + 1
        while j < n and (text[j].isalnum() or text[j] == "-"):
            j += 1
        name = text[i + 1 : j].lower()
        if name not in HTML_TAGS:
            raise EntityParseError(f'Unsupported start tag "{name}" at byte offset {b.byte_offset(begin)}')
        attrs, i = _parse_attrs(text, j, name, b, begin)
        if name == "span" and attrs.get("class") != "tg-spoiler":
            raise EntityParseError(
                f'Tag "span" must have class "tg-spoiler" at byte offset {b.byte_offset(begin)}'
            )
        stack.append({"tag": name, "start": b.pos16, "attrs": attrs})
    if stack:
        raise EntityParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1]["tag"]}"')
    return b.text, b.entities


def _parse_attrs(text: str, i: int, tag: str, b: _Builder, begin: int) -> tuple[dict[str, str], int]:
    attrs: dict[str, str] = {}
    n = len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            raise EntityParseError(f"Unclosed start tag at byte offset {b.byte_offset(begin)}")
        if text[i] == ">":
            return attrs, i + 1
        j = i
        while j < n and (text[j].isalnum() or text[j] in "-_"):
            j += 1
        attr = text[i:j].lower()
        if not attr:
            raise EntityParseError(
                f'Empty attribute name in the tag "{tag}" at byte offset {b.byte_offset(begin)}'
            )
        i = j
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i].isspace():
                i += 1
            if i >= n:
                raise EntityParseError(f"Unclosed start tag at byte offset {b.byte_offset(begin)}")
            if text[i] in "\"'":
                end = text.find(text[i], i + 1)
                if end == -1:
                    raise EntityParseError(f"Unclosed start tag at byte offset {b.byte_offset(begin)}")
                raw, i = text[i + 1 : end], end + 1
            else:
                j = i
                while j < n and not text[j].isspace() and text[j] != ">":
                    j += 1
                raw, i = text[i:j], j
            attrs[attr] = re.sub(
                r"&(#\d+|#[xX][0-9a-fA-F]+|[a-z]+);",
                lambda m: (_decode_entity(m.group(0), 0) or (m.group(0), 0))[0],
                raw,
            )
        else:
            attrs[attr] = ""


def _close_html(b: _Builder, top: dict[str, Any], stack: list[dict[str, Any]]) -> None:
    tag, start, attrs = top["tag"], top["start"], top["attrs"]
    kind = HTML_TAGS[tag]
    if tag == "a":
        url = attrs.get("href") or b.text[_index16(b.text, start) :]
        if url.startswith("tg://user?id="):
            uid = url.split("=", 1)[1]
            b.entity(
                "text_mention",
                start,
                user={"id": int(uid) if uid.isdigit() else 0, "is_bot": False, "first_name": ""},
            )
        else:
            b.entity("text_link", start, url=url)
    elif tag == "code" and stack and stack[-1]["tag"] == "pre":
        lang = attrs.get("class", "")
        if lang.startswith("language-"):
            stack[-1]["language"] = lang[len("language-") :]
        else:
            b.entity("code", start)
    elif tag == "pre":
        extra = {"language": top["language"]} if top.get("language") else {}
        b.entity("pre", start, **extra)
    elif tag == "blockquote":
        b.entity("expandable_blockquote" if "expandable" in attrs else "blockquote", start)
    elif tag == "tg-emoji":
        b.entity("custom_emoji", start, custom_emoji_id=attrs.get("emoji-id", ""))
    else:
        b.entity(kind, start)


def _index16(text: str, pos16: int) -> int:
    """Python index of the UTF-16 offset ``pos16`` in ``text``."""
    count = 0
    for idx, ch in enumerate(text):
        if count >= pos16:
            return idx
        count += 2 if ord(ch) > 0xFFFF else 1
    return len(text)


MD_NAMES = {"*": "Bold", "_": "Italic", "__": "Underline", "~": "Strikethrough", "||": "Spoiler"}
MD_KINDS = {"*": "bold", "_": "italic", "__": "underline", "~": "strikethrough", "||": "spoiler"}


def parse_markdown(text: str, v2: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """MarkdownV2 (``v2=True``) or legacy Markdown."""
    b = _Builder(text)
    stack: list[tuple[str, int, int]] = []  # (marker, start16, source index)
    i, n = 0, len(text)
    markers = ("||", "__", "*", "_", "~") if v2 else ("*", "_")
    while i < n:
        c = text[i]
        escapable = v2 and ord(text[i + 1]) <= 126 if i + 1 < n else False
        if c == "\\" and i + 1 < n and (escapable or (not v2 and text[i + 1] in "_*`[")):
            b.add(text[i + 1])
            i += 2
            continue
        if c == "`":
            i = _md_code(text, i, b, v2)
            continue
        if c == "[":
            i = _md_link(text, i, b, v2)
            continue
        marker = next((m for m in markers if text.startswith(m, i)), None)
        if marker:
            if stack and stack[-1][0] == marker:
                _, start, _src = stack.pop()
                b.entity(MD_KINDS[marker], start)
            elif any(m == marker for m, _, _ in stack):
                raise EntityParseError(
                    f"Can't find end of {MD_NAMES[stack[-1][0]]} entity at byte offset "
                    f"{b.byte_offset(stack[-1][2])}"
                )
            else:
                stack.append((marker, b.pos16, i))
            i += len(marker)
            continue
        if v2 and c == ">" and (i == 0 or text[i - 1] == "\n"):
            end = text.find("\n", i)
            end = n if end == -1 else end
            start = b.pos16
            inner, ents = parse_markdown(text[i + 1 : end], v2)
            for e in ents:
                e["offset"] += start
            b.add(inner)
            b.entities.extend(ents)
            b.entity("blockquote", start)
            i = end
            continue
        if v2 and c in MDV2_RESERVED:
            raise EntityParseError(f"Character '{c}' is reserved and must be escaped with the preceding '\\'")
        b.add(c)
        i += 1
    if stack:
        marker, _, src = stack[-1]
        raise EntityParseError(
            f"Can't find end of {MD_NAMES[marker]} entity at byte offset {b.byte_offset(src)}"
        )
    return b.text, b.entities


def _md_code(text: str, i: int, b: _Builder, v2: bool) -> int:
    pre = text.startswith("```", i)
    fence = "```" if pre else "`"
    j, buf = i + len(fence), []
    while j < len(text) and not text.startswith(fence, j):
        if v2 and text[j] == "\\" and j + 1 < len(text) and text[j + 1] in "`\\":
            buf.append(text[j + 1])
            j += 2
            continue
        buf.append(text[j])
        j += 1
    if j >= len(text):
        kind = "Pre" if pre else "Code"
        raise EntityParseError(f"Can't find end of {kind} entity at byte offset {b.byte_offset(i)}")
    body = "".join(buf)
    start = b.pos16
    if pre:
        language = ""
        if "\n" in body:
            first, rest = body.split("\n", 1)
            if first and not first.isspace():
                language, body = first.strip(), rest
        b.add(body)
        b.entity("pre", start, **({"language": language} if language else {}))
    else:
        b.add(body)
        b.entity("code", start)
    return j + len(fence)


def _md_link(text: str, i: int, b: _Builder, v2: bool) -> int:
    close = text.find("]", i + 1)
    while v2 and close > 0 and text[close - 1] == "\\":
        close = text.find("]", close + 1)
    if close == -1 or not text.startswith("(", close + 1):
        if v2:
            raise EntityParseError("Character '[' is reserved and must be escaped with the preceding '\\'")
        b.add("[")
        return i + 1
    end = text.find(")", close + 2)
    while v2 and end > 0 and text[end - 1] == "\\":
        end = text.find(")", end + 1)
    if end == -1:
        raise EntityParseError(f"Can't find end of a URL at byte offset {b.byte_offset(close + 1)}")
    url = re.sub(r"\\([)\\])", r"\1", text[close + 2 : end])
    start = b.pos16
    inner, ents = parse_markdown(text[i + 1 : close], v2) if v2 else (text[i + 1 : close], [])
    for e in ents:
        e["offset"] += start
    b.add(inner)
    b.entities.extend(ents)
    b.entity("text_link", start, url=url)
    return end + 1


def detect_entities(text: str, existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entities Telegram finds on its own (urls, mentions, hashtags, ...)."""
    taken = [
        (_index16(text, e["offset"]), _index16(text, e["offset"] + e["length"]))
        for e in existing
        if e["type"] in NO_AUTO_INSIDE
    ]
    found: list[dict[str, Any]] = []
    for kind, pattern in AUTO:
        for m in pattern.finditer(text):
            s, e = m.span()
            if any(s < te and ts < e for ts, te in taken):
                continue
            taken.append((s, e))
            found.append({"type": kind, "offset": utf16_len(text[:s]), "length": utf16_len(m.group(0))})
    return found


def finish(text: str, entities: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Trim surrounding whitespace like Telegram, clip entities, add detected ones, sort."""
    stripped = text.strip()
    lead = utf16_len(text[: len(text) - len(text.lstrip())])
    size = utf16_len(stripped)
    out = []
    for e in entities:
        start = max(0, e["offset"] - lead)
        end = min(size, e["offset"] + e["length"] - lead)
        if end > start:
            out.append({**e, "offset": start, "length": end - start})
    out += detect_entities(stripped, out)
    out.sort(key=lambda e: (e["offset"], -e["length"]))
    return stripped, out
