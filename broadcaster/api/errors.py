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
        text = json.dumps(value, ensure_ascii=False, default=str)
        return value if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"
    return value


async def validation_failed(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 (`detail[].loc` names the field), with each `input` cut short."""
    assert isinstance(exc, RequestValidationError)
    errors = [{**e, "input": shown(e["input"])} if "input" in e else e for e in exc.errors()]
    return JSONResponse(
        {"detail": jsonable_encoder(errors)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )
