"""What the app's routes share: the engine context, the job runner, the webhook dispatcher,
the limits; and the one error type every route raises for a caller's mistake."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from mailprobe.engine.context import Context
from mailprobe.serve import keys
from mailprobe.serve.config import ServeConfig
from mailprobe.serve.limits import RateLimiter
from mailprobe.serve.runner import JobRunner
from mailprobe.serve.webhooks import Dispatcher

KEYS_CACHE_SECONDS = 2.0  # how long "are there keys?" is believed


class ApiError(Exception):
    """A caller's mistake or a limit: the status and one clear line, as {"error": ...}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(eq=False)
class ServeState:
    ctx: Context
    config: ServeConfig
    runner: JobRunner
    webhooks: Dispatcher
    limiter: RateLimiter
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    _keys_at: float = -1e9
    _keys: int = 0

    async def keys_configured(self) -> bool:
        """Whether any live API key exists (then every API call needs one)."""
        now = time.monotonic()
        if now - self._keys_at > KEYS_CACHE_SECONDS:
            self._keys = await asyncio.to_thread(keys.active_keys, self.ctx.store)
            self._keys_at = now
        return self._keys > 0

    def forget_keys(self) -> None:
        self._keys_at = -1e9

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a background task (a probe whose caller stopped waiting) until it ends."""
        self.background.add(task)
        task.add_done_callback(self.background.discard)
