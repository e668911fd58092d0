"""How the API answers a request it refuses: a 422 that names the field and echoes only a little of it."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

ECHO_CHARS = 100  # of a refused value shown back in `input`: enough to recognise it


def shown(value: Any) -> Any:
    """What a 422 echoes of a refused value: itself when short, else its first ECHO_CHARS characters."""
    if isinstance(value, str):
        return value if len(value) <= ECHO_CHARS else value[:ECHO_CHARS] + "…"
    if isinstance(value, dict | list):
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (RecursionError, ValueError):  # nested too deep to show
            return "…"
        return value if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"
    return value


def printable(value: Any) -> Any:
    """`value` (from `jsonable_encoder`) with any lone surrogate written as `\\udXXX`: UTF-8 has none."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


async def validation_failed(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 (`detail[].loc` names the field), each `input` cut short, all of it UTF-8."""
    assert isinstance(exc, RequestValidationError)
    errors = [{**e, "input": shown(e["input"])} if "input" in e else e for e in exc.errors()]
    return JSONResponse(
        {"detail": printable(jsonable_encoder(errors))}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )
