"""Who is calling: an API key (`Authorization: Bearer KEY`, `X-API-Key: KEY`, or Reacher's
`x-reacher-secret` header, backend/src/http/mod.rs REACHER_SECRET_HEADER), checked
against the stored hashes; then the caller's rate limit.

With no live key in the database the API is open: `mailprobe serve` then binds to
loopback only (or the user said --no-auth). Once a key exists, every API call needs one;
a server listening on a public address needs one always (`require_key`), even after its
last key is revoked. A key that is shown is checked even where none is needed.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from fastapi import Request

from mailprobe.serve import keys
from mailprobe.serve.state import ApiError, ServeState

REACHER_SECRET_HEADER = "x-reacher-secret"


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: int | None
    who: str  # the rate limit's bucket


def state_of(request: Request) -> ServeState:
    state: ServeState = request.app.state.serve
    return state


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for name in ("x-api-key", REACHER_SECRET_HEADER):
        if request.headers.get(name):
            return request.headers[name].strip()
    return None


async def caller(request: Request) -> Caller:
    """The FastAPI dependency of every API route: 401 without a valid key (when keys
    exist), 429 past the caller's rate."""
    state = state_of(request)
    key_id: int | None = None
    key = presented_key(request) if state.config.auth else None
    if key is not None:  # a key shown is checked, even where none is needed
        key_id = await asyncio.to_thread(keys.check_key, state.ctx.store, key)
        if key_id is None:
            raise ApiError(401, "unknown or revoked API key", {"WWW-Authenticate": "Bearer"})
    elif state.config.auth and (state.config.require_key or await state.keys_configured()):
        raise ApiError(
            401,
            "an API key is required: send it as 'Authorization: Bearer KEY' "
            "(create one with `mailprobe apikey create`)",
            {"WWW-Authenticate": "Bearer"},
        )
    who = (
        f"key:{key_id}"
        if key_id is not None
        else f"ip:{request.client.host if request.client else '?'}"
    )
    wait = state.limiter.take(who)
    if wait is not None:
        raise ApiError(
            429,
            f"rate limit: {state.config.rate_limit} requests a minute (SERVE_RATE_LIMIT); "
            f"try again in {math.ceil(wait)} s",
            {"Retry-After": str(math.ceil(wait))},
        )
    return Caller(key_id, who)
