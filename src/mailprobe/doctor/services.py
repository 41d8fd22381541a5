"""The services mailprobe may be configured with: Redis (REDIS_URL), the database."""

from __future__ import annotations

import asyncio
import os

from mailprobe.config import Settings
from mailprobe.doctor.common import BELT_SLACK, REDIS_TIMEOUT, Check
from mailprobe.redact import redact_url


async def check_redis(settings: Settings) -> Check:
    url = settings.redis_url
    if not url:
        return Check("redis", "skip", "REDIS_URL not set: queueing runs in-process")
    import redis.asyncio
    import redis.exceptions

    client = redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
    )
    try:
        async with asyncio.timeout(2 * REDIS_TIMEOUT + BELT_SLACK):
            await client.ping()
    except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
        return Check(
            "redis",
            "fail",
            f"cannot reach {redact_url(url)}: {type(exc).__name__}: {exc}",
            "start Redis or correct REDIS_URL (unset it to run without a queue)",
        )
    finally:
        await client.aclose()
    return Check("redis", "pass", f"{redact_url(url)} answered PING")


def _sqlite_pending(url: str) -> str | None:
    """For a SQLite file that does not exist yet, why that is fine (or None)."""
    from mailprobe.store.database import normalise_url

    parsed = normalise_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return None
    if path.startswith("file:") or os.path.exists(path):
        return None
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
        return f"{path} does not exist yet; it will be created on first use"
    return None


async def check_database(settings: Settings) -> Check:
    from mailprobe.store.database import Store, StoreError

    url = settings.database_url
    fix = (
        "check DATABASE_URL, that the server is up and the credentials; then `mailprobe db upgrade`"
    )

    def check() -> str:
        pending = _sqlite_pending(url)
        if pending is not None:  # do not create files just to look at them
            return pending
        store = Store(url)
        try:
            store.check()
            return f"{store.shown_url} answered"
        finally:
            store.dispose()

    try:
        detail = await asyncio.to_thread(check)
    except StoreError as exc:
        return Check("database", "fail", str(exc), fix)
    except Exception as exc:  # a driver error the store does not wrap
        return Check("database", "fail", f"{type(exc).__name__}: {exc}", fix)
    return Check("database", "pass", detail)
