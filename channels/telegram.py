"""Telegram, through python-telegram-bot, to the brand's chats (a channel like @brand, groups).

API: the Bot API (`POST <api_base_url>/bot<token>/sendMessage`; `getMe` for the check).
Auth: the bot token in the URL, read from the environment variable the brands file
names. Limits: 4096 characters per message after entity parsing; text goes out with
`parse_mode=HTML`, escaped, so `<`, `&` or `*` arrive as written. Rate-limit signals:
about 30 messages/s per bot and 20/min per group or channel; beyond that a 429 with
`parameters.retry_after` (PTB raises `RetryAfter`). We pace below those limits with Redis
token buckets shared by every worker, so flood control is the exception.

No idempotency on Telegram's side: each chat is claimed before its send and recorded
after (`broadcaster.ledger.recipients`); a send whose answer never came (a read timeout, a
connection closed after the request left, a lost worker) makes that chat `uncertain` rather than
risking a second copy. An error status is a definite "not delivered", retried, also when its
body is a proxy's HTML page rather than the Bot API's JSON. One chat failing
(bot blocked, chat not found) does not fail the others.

Images: one goes with `sendPhoto`, two to four as an album with `sendMediaGroup`, the text
as the caption (on the album's first photo) when it fits Telegram's 1,024 characters after
entity parsing; a longer text goes first as its own message, then the images without a
caption. Both are one chat's send: if the images fail after the text went, the chat is
recorded failed with what arrived, and not sent again (that would repeat the text).

The library is async: each call runs to completion on the delivering thread's own event
loop, with one Bot per token per thread kept from one send to the next (its connection
with it), no hand-off to another thread (`workers/event_loop.py`, handed in through
`ctx.extras`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import httpx
from telegram import Bot, InputMediaPhoto, Message
from telegram.constants import MessageLimit, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest, RequestData
from telegram.request._requestparameter import RequestParameter  # RequestData's parts (not exported)

from broadcaster.core import shaping
from broadcaster.core.brands import read_secret
from broadcaster.ledger import recipients
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.pacing import Bucket
from broadcaster.ledger.recipients import Recipients, Roster
from broadcaster.ledger.tls import client_context
from channels.base import (
    ChannelError,
    ConfiguredChannel,
    Outbound,
    PermanentError,
    RateLimited,
    Receipt,
    TransientError,
)
from channels.fanout import Run, finish, last_try, written_on_error
from channels.media import Image, load_images

T = TypeVar("T")
log = logging.getLogger("broadcaster.telegram")
# The request certainly did not reach Telegram: safe to send again.
NOT_SENT_CAUSES = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def new_bot(token: str, api_base_url: str, settings) -> Bot:
    """A Bot with a small pool and explicit timeouts (PTB's default pool is 256 connections)."""
    request = HTTPXRequest(
        connection_pool_size=settings.telegram_pool_size,
        connect_timeout=settings.http_connect_timeout_s,
        read_timeout=settings.http_read_timeout_s,
        write_timeout=settings.http_read_timeout_s,
        pool_timeout=1.0,
        httpx_kwargs={"verify": client_context()},  # the process's one TLS context
    )
    return Bot(token, base_url=f"{api_base_url}/bot", request=request, get_updates_request=request)


async def close_bot(bot: Bot) -> None:
    await bot.request.shutdown()


@dataclass(frozen=True)
class Sent:
    """What the ledger keeps of a message Telegram accepted."""

    message_id: int
    username: str | None  # the chat's public @name, for the message's t.me link

    @classmethod
    def of(cls, message: Message) -> Sent:
        return cls(message.message_id, getattr(message.chat, "username", None))


async def send_text(bot: Bot, chat: str, html: str) -> Sent:
    """`sendMessage` through the Bot's own request object: PTB's HTTP client, timeouts and error
    mapping (`RetryAfter`, `BadRequest`, `Forbidden`, ... are raised there), without building a
    `Message` object from the answer, which costs about as much CPU as the rest of the call."""
    data = RequestData(
        [
            RequestParameter.from_input("chat_id", chat_ref(chat)),
            RequestParameter.from_input("text", html),
            RequestParameter.from_input("parse_mode", ParseMode.HTML.value),
        ]
    )
    result: Any = await bot.request.post(f"{bot.base_url}/sendMessage", request_data=data)
    return Sent(int(result["message_id"]), result.get("chat", {}).get("username"))


def chat_ref(rid: str) -> int | str:
    """A recipient id back to what the Bot API takes: a number, or "@channelname"."""
    return int(rid) if re.fullmatch(r"-?\d+", rid) else rid


def certainly_not_sent(e: TelegramError) -> bool:
    """Did the request never reach Telegram, or did an error status come back?

    PTB raises an error status with no cause, or, when the body is not JSON (a proxy's HTML
    502 page), chained to its own parse failure (a `TelegramError`). Either is a definite answer:
    not delivered. (A 2xx whose body is not JSON is chained to the `JSONDecodeError` itself: it
    may have been delivered.)
    """
    cause = e.__cause__
    return cause is None or isinstance(cause, (TelegramError, *NOT_SENT_CAUSES))


def short_message(e: TelegramError) -> str:
    """PTB's message without the page it could not parse ("Bad Gateway (502). Parsing ...")."""
    return e.message.split(". Parsing the server response", 1)[0][:200]


def retry_after_s(e: RetryAfter) -> float:
    with warnings.catch_warnings():  # PTB 22 warns that the int will become a timedelta
        warnings.simplefilter("ignore")
        value = e.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def chat_error(e: TelegramError, chat: str) -> str:
    """Why one chat cannot get the post, in words an operator acts on."""
    if isinstance(e, Forbidden):
        return f"the bot may not post in {chat} (blocked, removed, or not an admin of the channel)"
    if isinstance(e, ChatMigrated):
        return f"{chat} became a supergroup: use chat id {e.new_chat_id} in the brands file"
    return f"Telegram refused the message for {chat}: {e.message}"


class TelegramChannel(ConfiguredChannel):
    name: ClassVar[str] = "telegram"
    idempotent: ClassVar[bool] = True  # per-chat claim markers make a resend skip who has it

    # ---- the async client, on this thread's loop -------------------------------------------------
    def _token(self) -> str:
        return read_secret(self.cfg.bot_token_env, f"Telegram bot token of {self.brand.id}")

    def _call(self, use: Callable[[Bot], Awaitable[T]]) -> T:
        s = self.ctx.settings
        token = self._token()
        timeout = s.http_connect_timeout_s + 2 * s.http_read_timeout_s + 2
        runner = self.ctx.extras.get("async_runner")
        if runner is not None:
            bot = runner.cached(
                ("telegram", token, self.cfg.api_base_url),
                lambda: new_bot(token, self.cfg.api_base_url, s),
                close_bot,
            )
            return runner.run(use(bot), timeout)

        log.info("no per-process event loop offered; using a short-lived one for this call")

        async def once() -> T:  # no per-process loop (a plain script): a short-lived one
            bot = new_bot(token, self.cfg.api_base_url, s)
            try:
                return await asyncio.wait_for(use(bot), timeout)
            finally:
                await close_bot(bot)

        return asyncio.run(once())

    # ---- sending -------------------------------------------------------------------------------
    def send(self, message: Outbound) -> Receipt:
        problem = shaping.validate_for_channel("telegram", message.text, message.link, self.brand)
        if problem:
            raise PermanentError(f"the text {problem}")
        html = shaping.telegram_html(message.text, message.link)
        images = load_images(self.ctx.settings, message, self.name)
        as_caption = shaping.telegram_length(message.text, message.link) <= MessageLimit.CAPTION_LENGTH
        s = self.ctx.settings
        bot_id = self._token().split(":", 1)[0]  # the public part of the token names the buckets
        keys = Keys(s.key_prefix)
        roster = Roster(Recipients(self.ctx.redis, s, message.post_id, self.name), s.recipients_shown)
        run = Run(what="chats")
        # ~30/s per bot: a burst of 5 on top of the rate keeps any one second at or under it.
        bot_bucket = Bucket(keys.pace("telegram", "bot", bot_id), self.cfg.bot_per_s, 5)
        # and each chat's own (20/min for a group or channel): its key ends with the chat
        per_chat = Bucket(
            keys.pace("telegram", "chat", bot_id, ""), self.cfg.chat_per_minute / 60, self.cfg.chat_burst
        )
        with written_on_error(roster):
            taken = roster.take(
                message.attempt,
                len(self.cfg.chat_ids),
                [bot_bucket],
                per_chat,
                people=(str(c) for c in self.cfg.chat_ids),
            )
            if taken.wait_s is not None:
                run.wait_for_token(taken.wait_s)
            for chat in taken.claimed:
                self._send_one(roster, run, chat, html, message.attempt, images, as_caption)
            return self._receipt(finish(roster, run), roster)

    @staticmethod
    async def _send_images(bot: Bot, chat: str, images: list[Image], caption: str | None) -> Sent:
        """One photo, or an album (the caption on its first photo); the first message."""
        if len(images) == 1:
            photo = await bot.send_photo(
                chat_id=chat_ref(chat),
                photo=images[0].data,
                caption=caption,
                parse_mode=ParseMode.HTML if caption else None,
                filename=images[0].filename,
            )
            return Sent.of(photo)
        album = [
            InputMediaPhoto(
                image.data,
                caption=caption if i == 0 else None,
                parse_mode=ParseMode.HTML if caption and i == 0 else None,
                filename=image.filename,
            )
            for i, image in enumerate(images)
        ]
        sent = await bot.send_media_group(chat_id=chat_ref(chat), media=album)
        return Sent.of(sent[0])

    def _send_one(
        self,
        roster: Roster,
        run: Run,
        chat: str,
        html: str,
        attempt: int,
        images: list[Image] | None = None,
        as_caption: bool = True,
    ) -> None:
        text_sent: Sent | None = None
        try:
            if images and as_caption:
                sent = self._call(lambda bot: self._send_images(bot, chat, images, html))
            else:
                sent = text_sent = self._call(lambda bot: send_text(bot, chat, html))
                if images:  # the text was too long for a caption: it went first, on its own
                    self._call(lambda bot: self._send_images(bot, chat, images, None))
        except (TelegramError, TimeoutError) as e:
            if text_sent is None:
                self._after_error(roster, run, chat, e, attempt)
                return
            why = short_message(e) if isinstance(e, TelegramError) else "timed out"
            roster.record(  # the text arrived; sending again would repeat it
                chat,
                recipients.FAILED,
                message_id=text_sent.message_id,
                url=self._message_url(chat, text_sent),
                error=f"the text went but the images did not ({why}); not resent",
            )
        else:
            roster.record(
                chat, recipients.SENT, message_id=sent.message_id, url=self._message_url(chat, sent)
            )

    def _after_error(self, roster: Roster, run: Run, chat: str, e: Exception, attempt: int) -> None:
        """Nothing is known to have arrived in this chat: record why, and whether to try again."""
        if isinstance(e, RetryAfter):  # flood control: nothing was sent
            roster.record(chat, recipients.PENDING, error="Telegram flood control")
            run.retry_later(RateLimited(f"Telegram flood control on {chat}", retry_after_s(e)))
        elif isinstance(e, InvalidToken):
            roster.record(chat, recipients.PENDING, error="bot token rejected")
            raise PermanentError(
                f"Telegram rejected the bot token for brand {self.brand.id} (or api_base_url is wrong)"
            ).carrying(roster.public()) from e
        elif isinstance(e, BadRequest | Forbidden | ChatMigrated):  # BadRequest is a NetworkError too
            roster.record(chat, recipients.FAILED, error=chat_error(e, chat))
        else:
            self._after_network_error(roster, run, chat, e, attempt)

    def _after_network_error(self, roster: Roster, run: Run, chat: str, e: Exception, attempt: int) -> None:
        if isinstance(e, TelegramError) and certainly_not_sent(e):
            what = "timed out connecting" if isinstance(e, TimedOut) else short_message(e)
            error: ChannelError = TransientError(f"Telegram unreachable for {chat}: {what}")
            if last_try(attempt, self.ctx.settings):
                roster.record(
                    chat, recipients.FAILED, error=f"{error.message} (gave up after {attempt} attempts)"
                )
            else:
                roster.record(chat, recipients.PENDING, error=error.message)
                run.retry_later(error)
            return
        # The request left and no answer came back: it may have been delivered.
        kind = "timed out" if isinstance(e, TimedOut | TimeoutError) else type(e).__name__
        roster.record(
            chat, recipients.UNCERTAIN, error=f"Telegram {kind} after the message was sent; not resent"
        )

    @staticmethod
    def _message_url(chat: str, sent: Sent) -> str | None:
        return f"https://t.me/{sent.username}/{sent.message_id}" if sent.username else None

    def _receipt(self, receipt: Receipt, roster: Roster) -> Receipt:
        """The first chat's message as the delivery's link, when there is one to show."""
        for entry in roster.entries().values():
            if entry.get("state") == recipients.SENT and entry.get("url"):
                return dataclasses.replace(receipt, url=entry["url"])
        return receipt

    def check(self) -> str:
        try:
            me: Any = self._call(lambda bot: bot.get_me())
        except InvalidToken as e:
            raise PermanentError(f"Telegram rejected the bot token for brand {self.brand.id}") from e
        except TelegramError as e:
            raise TransientError(f"Telegram unreachable while checking the bot: {e.message}") from e
        chats = ", ".join(str(c) for c in self.cfg.chat_ids)
        return f"@{me.username} (bot {me.id}), chats {chats}"
