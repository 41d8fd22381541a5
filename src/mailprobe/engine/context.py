"""The things a process shares between probes, held in one object the faces create.

A face (CLI command, queue job, HTTP app) builds one `Context` and passes it down;
the engine never reaches for a module-level singleton. Tests build their own,
with a private store, throttle or behaviour cache.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mailprobe.behavior import BehaviorCache
from mailprobe.behavior import default_cache as default_behavior
from mailprobe.config import Settings, get_settings
from mailprobe.egress import RouteTable
from mailprobe.mxcache import MXCache
from mailprobe.store import Store, open_store
from mailprobe.store import queries as q
from mailprobe.throttle import Throttle, make_throttle


@dataclass(eq=False)
class Context:
    """Settings, store, MX cache, behaviour cache and (made on first use) the throttle."""

    settings: Settings
    store: Store
    mx_cache: MXCache
    # The process's cache by default: the seed's `record_mx_probe` hook writes there.
    behavior: BehaviorCache = field(default_factory=lambda: default_behavior)
    _throttle: Throttle | None = None
    _routes: RouteTable | None = None

    @classmethod
    def create(
        cls,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        throttle: Throttle | None = None,
        behavior: BehaviorCache | None = None,
    ) -> Context:
        """The embedded defaults: the settings' database (migrated on first use), an MX
        cache over it, the process's behaviour cache; the throttle when first needed."""
        settings = settings or get_settings()
        store = store or open_store(settings.database_url)
        return cls(
            settings,
            store,
            MXCache(store, settings),
            behavior or default_behavior,
            throttle,
        )

    @property
    def throttle(self) -> Throttle:
        """The settings' throttle (Redis-backed when REDIS_URL is set), made once."""
        if self._throttle is None:
            self._throttle = make_throttle(self.settings)
        return self._throttle

    @property
    def routes(self) -> RouteTable:
        """The egress routes (SMTP_PROXY, SMTP_ROUTES, MX_ROUTES...) and their health, made once."""
        if self._routes is None:
            self._routes = RouteTable.from_settings(self.settings)
        return self._routes

    async def aclose(self) -> None:
        """Close what this context opened (the throttle's connections)."""
        if self._throttle is not None:
            await self._throttle.aclose()
            self._throttle = None

    # -- what the MX hosts showed, shared through the store ----------------------

    def flush_behavior(self) -> int:
        """Write the behaviour of every MX probed since the last flush; return how many."""
        snapshots = self.behavior.dirty()
        if snapshots:
            try:
                with self.store.session() as session:
                    q.save_mx_behavior(session, snapshots)
            except BaseException:
                self.behavior.unsaved(snapshots)  # kept for the next flush
                raise
        return len(snapshots)

    def load_behavior(self, hosts: Iterable[str] | None = None) -> None:
        """Start from what earlier runs (and other workers) learned about each MX (or `hosts`)."""
        with self.store.session() as session:
            self.behavior.load(q.load_mx_behavior(session, hosts))
