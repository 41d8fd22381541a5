"""MX resolution through the cache, for one domain or many."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from mailprobe.engine.context import Context
from mailprobe.mxcache import CachedMX
from mailprobe.smtp import run_sync
from mailprobe.store import queries as q


async def aget_or_resolve_mx(
    domain: str, force: bool = False, *, ctx: Context | None = None
) -> CachedMX:
    return await (ctx or Context.create()).mx_cache.get(domain, force=force)


def get_or_resolve_mx(domain: str, force: bool = False) -> dict[str, Any]:
    """The seed's R15 helper: the domain's resolution as a dict (lowest_mx, mx_hosts, status...)."""
    return run_sync(aget_or_resolve_mx(domain, force)).as_dict()


async def aresolve_domains(
    domains: Iterable[str], force: bool = False, *, ctx: Context | None = None
) -> list[CachedMX]:
    """Resolve many domains at once (the cache shares lookups of the same domain)."""
    cache = (ctx or Context.create()).mx_cache
    return list(await asyncio.gather(*(cache.get(d, force=force) for d in domains)))


async def stored_domains(ctx: Context | None = None) -> list[str]:
    """Every distinct domain of the stored addresses, for `resolve --from-db`."""
    store = (ctx or Context.create()).store

    def read() -> list[str]:
        with store.session() as session:
            return q.stored_domains(session)

    return await asyncio.to_thread(read)
