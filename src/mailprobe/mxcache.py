"""MX lookups through the domain_resolutions table: the seed's `get_or_resolve_mx`.

A resolution is served from the table until it expires. How long each status lives:

- OK: the DNS TTL clamped to [MX_CACHE_MIN_TTL, MX_CACHE_MAX_TTL].
- NXDOMAIN and "no mail host" (NODATA): authoritative negative answers, kept for
  their RFC 2308 §5 negative TTL (min of the SOA's TTL and MINIMUM), at most
  MX_NEGATIVE_TTL; without an SOA not at all (RFC 2308 §5: SHOULD NOT be cached).
- null MX: a published record saying "no mail", kept MX_NEGATIVE_TTL.
- DNS_ERROR (SERVFAIL, timeout, no server answered): temporary, so first asked again
  patiently (growing budgets up to DNS_MAX_TIMEOUT, see `dns.patiently`); if that
  fails too and a previous good answer exists, that answer is served stale and the
  failure not stored (stale-if-error); otherwise the failure is stored for only
  MX_ERROR_TTL seconds (RFC 2308 §7.1, RFC 9520 §3.2: at most five minutes), so a
  burst of callers does not hammer a broken domain, nor is it remembered as final.
  (RFC 2308 §7.1: a server failure "MUST NOT" be cached "for longer than five (5)
  minutes"; RFC 9520 §3.2 keeps that bound: https://www.rfc-editor.org/rfc/rfc9520.)
Concurrent callers for one domain share a single lookup.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import dns.asyncresolver

from mailprobe.address import check_hostname
from mailprobe.config import Settings, get_settings
from mailprobe.dns import (
    MXRecord,
    MXResolution,
    ResolutionStatus,
    default_resolver,
    patiently,
    resolve_mx,
)
from mailprobe.flags import is_disposable, is_freemail
from mailprobe.store import Store
from mailprobe.store import queries as q
from mailprobe.store.models import DomainResolution, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class CachedMX:
    """A resolution plus where it came from and how long it is good for."""

    resolution: MXResolution
    resolved_at: datetime
    expires_at: datetime
    from_cache: bool = False
    stale: bool = False  # served past expiry because DNS is failing right now
    flags: dict[str, Any] = field(default_factory=dict)
    catch_all: bool | None = None
    catch_all_checked_at: datetime | None = None

    def catch_all_fresh(self, now: datetime, ttl_seconds: float) -> bool | None:
        """The stored catch-all finding if checked within `ttl_seconds`, else None."""
        checked = self.catch_all_checked_at
        if checked is None or now - checked > timedelta(seconds=ttl_seconds):
            return None
        return self.catch_all

    @property
    def status(self) -> ResolutionStatus:
        return self.resolution.status

    @property
    def lowest_mx(self) -> str | None:
        return self.resolution.lowest_mx

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.resolution.domain,
            "status": self.status.value,
            "lowest_mx": self.lowest_mx,
            "mx_hosts": [
                {"preference": r.preference, "host": r.host} for r in self.resolution.records
            ],
            "implicit_mx": self.resolution.implicit,
            "ttl": self.resolution.ttl,
            "error": self.resolution.error,
            "from_cache": self.from_cache,
            "stale": self.stale,
            "flags": self.flags,
            "catch_all": self.catch_all,
            "resolved_at": self.resolved_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }


def domain_flags(domain: str) -> dict[str, bool]:
    return {"free": is_freemail(domain), "disposable": is_disposable(domain)}


class MXCache:
    """get_or_resolve_mx over one Store, one resolver and one clock (tests inject a clock)."""

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        resolver: dns.asyncresolver.Resolver | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.settings = settings or get_settings()
        self._resolver = resolver
        self.clock = clock
        self._inflight: dict[str, asyncio.Future[CachedMX]] = {}
        self._unsaved: dict[str, CachedMX] = {}  # deferred writes, see refresh()
        self._unsaved_lock = threading.Lock()  # flush() runs in a worker thread

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = default_resolver(self.settings)
        return self._resolver

    async def get(self, domain: str, *, force: bool = False) -> CachedMX:
        name = check_hostname(domain, "domain")
        row = None if force else await asyncio.to_thread(self._read, name)
        if row is not None and self.fresh(row):
            return row
        return await self.refresh(name, previous=row)

    def fresh(self, cached: CachedMX) -> bool:
        return cached.expires_at > self.clock()

    def read_many(self, domains: list[str]) -> dict[str, CachedMX]:
        """The stored entries of many domains, fresh or not, in one query (sync: call it in
        a thread). A list of many domains costs one round trip per batch, not per domain."""
        with self.store.session() as session:
            return {row.domain: _from_row(row) for row in q.get_resolutions(session, domains)}

    async def refresh(
        self,
        domain: str,
        *,
        previous: CachedMX | None = None,
        defer_write: bool = False,
        slots: asyncio.Semaphore | None = None,
    ) -> CachedMX:
        """Ask DNS now (one lookup per domain at a time, however many callers) and store
        the answer; `previous` is the stored entry, served stale if DNS fails.

        With `defer_write` the answer is kept for the next `flush()` rather than written
        at once: the bulk engine writes a batch of them in one transaction. `slots`
        bounds the DNS queries in flight (held per try, not while waiting to retry)."""
        name = check_hostname(domain, "domain")
        pending = self._inflight.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CachedMX] = asyncio.get_running_loop().create_future()
        self._inflight[name] = future
        try:
            answer = await self._refresh(name, previous, defer_write, slots)
            future.set_result(answer)
            return answer
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so no "never retrieved" warning
            raise
        finally:
            del self._inflight[name]

    async def _refresh(
        self,
        name: str,
        previous: CachedMX | None,
        defer_write: bool,
        slots: asyncio.Semaphore | None,
    ) -> CachedMX:
        # With a good answer in hand one try will do (served stale if it fails);
        # without one, a slow or failing domain gets the whole DNS_MAX_TIMEOUT.
        good = previous is not None and previous.status is ResolutionStatus.OK
        patience = 0.0 if good else self.settings.dns_max_timeout
        resolution = await patiently(
            lambda r: resolve_mx(name, resolver=r),
            lambda r: r.is_temporary,
            resolver=self.resolver,
            total=patience,
            slots=slots,
        )
        now = self.clock()
        if resolution.is_temporary:
            stale = previous or await asyncio.to_thread(self._read, name)  # None when forced
            # Only a good answer is served stale: an old "no mail" must not become a
            # final verdict while DNS cannot confirm it, nor an old failure live on.
            if stale is not None and stale.status is ResolutionStatus.OK:
                return replace(stale, stale=True)
        ttl = self.ttl_for(resolution)
        cached = CachedMX(resolution, now, now + timedelta(seconds=ttl), flags=domain_flags(name))
        if ttl <= 0:
            return cached  # nothing to remember: the next call asks again
        if defer_write:
            with self._unsaved_lock:
                self._unsaved[name] = cached
        else:
            await asyncio.to_thread(self._write, cached)
        return cached

    def ttl_for(self, resolution: MXResolution) -> float:
        """Seconds to keep `resolution`, by status (see the module docstring)."""
        s = self.settings
        match resolution.status:
            case ResolutionStatus.OK:
                return min(max(resolution.ttl, s.mx_cache_min_ttl), s.mx_cache_max_ttl)
            case ResolutionStatus.NO_SUCH_DOMAIN | ResolutionStatus.NO_MAIL_HOST:
                return min(resolution.ttl, s.mx_negative_ttl)  # RFC 2308 §5
            case ResolutionStatus.NULL_MX:
                return s.mx_negative_ttl
            case _:  # DNS_ERROR: RFC 2308 §7.1, RFC 9520 §3.2: five minutes at most
                return min(s.mx_error_ttl, 300)

    def flush(self) -> None:
        """Write the deferred answers in one transaction (sync: call it in a thread). On a
        database error they stay for the next flush."""
        with self._unsaved_lock:
            unsaved, self._unsaved = self._unsaved, {}
        if not unsaved:
            return
        try:
            with self.store.session() as session:
                for cached in unsaved.values():
                    self._save(session, cached)
        except BaseException:
            with self._unsaved_lock:
                self._unsaved = {**unsaved, **self._unsaved}
            raise

    def _read(self, name: str) -> CachedMX | None:
        return self.read_many([name]).get(name)

    def save_catch_all(self, domain: str, catch_all: bool) -> None:
        """Remember what the catch-all probe found (sync: call it in a thread)."""
        with self._unsaved_lock:
            unsaved = self._unsaved.pop(domain, None)
        with self.store.session() as session:
            if unsaved is not None:  # its row must exist before it can be updated
                self._save(session, unsaved)
            q.save_catch_all(session, domain, catch_all, self.clock())

    def _write(self, cached: CachedMX) -> None:
        with self.store.session() as session:
            self._save(session, cached)

    @staticmethod
    def _save(session: Session, cached: CachedMX) -> None:
        r = cached.resolution
        q.save_resolution(
            session,
            r.domain,
            status=r.status.value,
            mx_hosts=[{"preference": m.preference, "host": m.host} for m in r.records],
            lowest_mx=r.lowest_mx,
            implicit_mx=r.implicit,
            ttl=r.ttl,
            error=r.error,
            flags=cached.flags,
            resolved_at=cached.resolved_at,
            expires_at=cached.expires_at,
        )


def _from_row(row: DomainResolution) -> CachedMX:
    resolution = MXResolution(
        domain=row.domain,
        status=ResolutionStatus(row.status),
        records=tuple(MXRecord(int(m["preference"]), str(m["host"])) for m in row.mx_hosts),
        ttl=row.ttl,
        implicit=row.implicit_mx,
        error=row.error,
    )
    return CachedMX(
        resolution,
        row.resolved_at,
        row.expires_at,
        from_cache=True,
        flags=dict(row.flags),
        catch_all=row.catch_all,
        catch_all_checked_at=row.catch_all_checked_at,
    )
