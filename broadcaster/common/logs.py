"""Logging for every process: JSON lines in production, readable lines in a terminal.

Each record carries the context an operator searches by (post id, brand, channel,
Celery task id) when the code passes it as `extra=` or a task is running. A redaction
filter runs on every record, whatever library logged it, so no secret value (tokens,
passwords, API keys from the environment or settings) and no full phone number ever
reaches a log line: phone numbers keep their last two digits, secrets become `***`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

from broadcaster.core.settings import Settings

CONTEXT_FIELDS = ("post_id", "brand", "channel", "task_id", "hook_id", "target")
SECRET_ENV_HINTS = ("TOKEN", "PASSWORD", "SECRET", "API_KEY", "AUTH", "PRIVATE")
MIN_SECRET_LEN = 6  # shorter values would redact ordinary words

# E.164 (+15551230000, +44 20 7946 0958) and grouped national numbers ((555) 123-4567).
_PHONE = re.compile(r"(?<![\w/.:+-])(?:\+\d(?:[ .-]?\d){7,14}|\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4})(?![\w/.-])")
_TELEGRAM_TOKEN = re.compile(r"(?<![0-9])\d{5,}:[A-Za-z0-9_-]{20,}")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_KEY_VALUE = re.compile(
    r"(?i)\b(password|passwd|token|secret|api[_-]?key|auth[_-]?token|access[_-]?token)"
    r"(\"?\s*[:=]\s*\"?)([^\s\"',&;]+)"
)
_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)([^@\s/]+)(@)")
_WORD = re.compile(r"\w*")  # none of the patterns above can match without a character outside it


def mask_phone(number: str) -> str:
    """Keep the shape and the last two digits: enough to tell recipients apart in a log."""
    digits = [c for c in number if c.isdigit()]
    keep = "".join(digits[-2:])
    return ("+" if number.startswith("+") else "") + "*" * max(len(digits) - 2, 1) + keep


def _looks_like_phone(text: str) -> bool:
    """Bare digit runs never match the pattern: they are timestamps, counters and chat ids."""
    return 8 <= sum(c.isdigit() for c in text) <= 15


def known_secrets(settings: Settings | None = None, environ: dict[str, str] | None = None) -> set[str]:
    """Secret values this process could leak: settings' secrets and secret-looking env vars."""
    env = os.environ if environ is None else environ
    found = {
        v
        for k, v in env.items()
        if any(h in k.upper() for h in SECRET_ENV_HINTS) and len(v) >= MIN_SECRET_LEN
    }
    if settings is not None:
        for name in ("admin_api_key", "flower_password"):
            value = getattr(settings, name, None)
            if value is not None and len(value.get_secret_value()) >= MIN_SECRET_LEN:
                found.add(value.get_secret_value())
    return found


def redact(text: str, secrets: set[str] | frozenset[str] = frozenset()) -> str:
    """`text` without secret values, credentials in URLs or headers, or full phone numbers."""
    return _redact(text, _longest_first(secrets))


def _longest_first(secrets: set[str] | frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(secrets, key=len, reverse=True))


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    """`redact`, with the secrets longest first. The costlier patterns run only where the text
    has the characters they need (`://`, a colon, an equals sign), and none on an id or a name:
    every process runs this on each line it logs, and the patterns were most of a line's cost."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    if _WORD.fullmatch(text):  # letters, digits, `_` (ids, names): no pattern below can match
        return text
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1***\3", text)
    if ":" in text:
        text = _TELEGRAM_TOKEN.sub("***", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} ***", text)
    if ":" in text or "=" in text:
        text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)) if _looks_like_phone(m.group(0)) else m.group(0), text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (arguments merged in) and context fields, redacted."""

    def __init__(self, secrets: set[str]):
        super().__init__()
        self._ordered = _longest_first(frozenset(secrets))  # the secrets, sorted once

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = str(record.msg)
        record.msg = _redact(message, self._ordered)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _redact(record.exc_text, self._ordered)
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, _redact(value, self._ordered))
        return True


class RoutineTaskFilter(logging.Filter):
    """Drops Celery's INFO lines about the every-second housekeeping tasks (beat sends them,
    a worker runs them); their warnings and errors still pass."""

    ROUTINE = ("broadcaster.dispatch_due", "broadcaster.webhook_fanout", "broadcaster.sweep")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not record.name.startswith("celery"):
            return True
        message = str(record.msg) + " ".join(str(a) for a in (record.args or ()))
        if isinstance(record.args, dict):
            message += " ".join(str(v) for v in record.args.values())
        return not any(name in message for name in self.ROUTINE)


class TaskContextFilter(logging.Filter):
    """Adds the running Celery task's id (and name), when there is one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task_id", None):
            return True
        try:
            from celery._state import get_current_task
        except ImportError:  # pragma: no cover - celery is a dependency
            return True
        task = get_current_task()
        if task is not None and task.request.id:
            record.task_id = task.request.id
            record.task_name = task.name
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def __init__(self, process: str):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process,
            "msg": record.getMessage(),
        }
        for name in (*CONTEXT_FIELDS, "task_name"):
            value = getattr(record, name, None)
            if value not in (None, ""):
                body[name] = value
        if record.exc_text:
            body["exc"] = record.exc_text
        return json.dumps(body, ensure_ascii=False, default=str)


class ConsoleFormatter(logging.Formatter):
    """`12:00:01 INFO  broadcaster.deliver  delivered ... [post=p_.. channel=bluesky]`."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        context = " ".join(
            f"{name.removesuffix('_id')}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) not in (None, "")
        )
        line = f"{when} {record.levelname:<7} {record.name}  {record.getMessage()}"
        if context:
            line += f"  [{context}]"
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def configure_logging(settings: Settings, process: str, stream: Any = None) -> logging.Handler:
    """Route every logger through one redacting handler on stderr (JSON or console lines).

    Called once at the start of the API, worker and beat processes (and by tests).
    JSON when `log_format` is json or the environment is production.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    use_json = settings.log_format == "json" or settings.environment == "production"
    handler.setFormatter(JsonFormatter(process) if use_json else ConsoleFormatter())
    handler.addFilter(RoutineTaskFilter())
    handler.addFilter(TaskContextFilter())
    handler.addFilter(RedactingFilter(known_secrets(settings)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Libraries that log every request (with URLs that hold bot tokens) stay at WARNING.
    for noisy in ("httpx", "httpcore", "urllib3", "twilio.http_client", "telegram.ext", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "flower", "tornado"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    return handler
