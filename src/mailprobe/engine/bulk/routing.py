"""Where a recipient goes next: its domain's MX (looked up once), then that host's lane.

New domains are looked up together: the stored MX of a batch in one query, DNS for
the rest (at most `dns_concurrency` at once), whose answers the writer stores in
batches: a list of many domains must not cost a database round trip, let alone a
commit, per domain. A domain without mail (or whose lookup failed) is answered from
DNS; a recipient past its domain's last MX is answered with what it last got. An MX
that could not be reached is tried after the others, in this run and, through the
behaviour cache, in later ones (for MX_DEAD_TTL).

Each MX host has a lane (and a slow lane); a lane looks up its host's addresses
before its first session, so a rate token is never spent waiting on DNS. Domains
with nothing in flight are forgotten once there are many (memory stays bounded).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Protocol

from mailprobe.dns import MXResolution, ResolutionStatus, resolve_host
from mailprobe.engine.bulk.catchall import CatchAllCheck
from mailprobe.engine.bulk.options import MAX_DOMAIN_STATES, BulkOptions
from mailprobe.engine.bulk.state import DomainState, MXLane
from mailprobe.engine.bulk.targets import Recipient
from mailprobe.engine.context import Context
from mailprobe.engine.probe import no_mail_host
from mailprobe.mxcache import CachedMX
from mailprobe.results import Outcome
from mailprobe.store.models import utcnow

log = logging.getLogger(__name__)


class Conductor(Protocol):
    """What routing hands recipients and tasks to."""

    def answered(self, recipient: Recipient, outcome: Outcome) -> None: ...

    def finalize(self, recipient: Recipient, outcome: Outcome) -> None: ...

    def kick(self, lane: MXLane) -> None: ...

    def spawn(self, coro: Awaitable[Any]) -> None: ...

    def watch(self, task: asyncio.Task[Any]) -> None: ...


class Router:
    """The run's domains and lanes, and the lookups that fill them."""

    def __init__(self, conductor: Conductor, ctx: Context, options: BulkOptions) -> None:
        self.conductor = conductor
        self.ctx = ctx
        self.options = options
        self.domains: dict[str, DomainState] = {}
        self.lanes: dict[tuple[str, bool], MXLane] = {}
        self._unresolved: list[DomainState] = []  # new domains, looked up in one batch
        self._dns_slots = asyncio.Semaphore(options.dns_concurrency)

    def domain(self, name: str) -> DomainState:
        state = self.domains.get(name)
        if state is None:
            state = self.domains[name] = DomainState(name)
        return state

    def known(self, name: str) -> DomainState | None:
        return self.domains.get(name)

    def forget_if_idle(self, state: DomainState) -> None:
        """Bound memory on lists with many domains: a domain with nothing left in flight is
        dropped once there are many (its MX and catch-all finding stay in the store)."""
        if len(self.domains) > MAX_DOMAIN_STATES and state.idle:
            self.domains.pop(state.name, None)

    # -- to the domain's MX ----------------------------------------------------------

    def route(self, recipient: Recipient) -> None:
        state = self.domain(recipient.domain)
        if state.resolution is None:
            state.waiting.append(recipient)
            if not state.resolving:
                state.resolving = True
                if not self._unresolved:  # the first of this batch: look them up together
                    asyncio.get_running_loop().call_soon(self._resolve_batch)
                self._unresolved.append(state)
            return
        self._dispatch(recipient, state)

    def _resolve_batch(self) -> None:
        states, self._unresolved = self._unresolved, []
        if states:
            self.conductor.spawn(self._look_up_domains(states))

    async def _look_up_domains(self, states: list[DomainState]) -> None:
        cache = self.ctx.mx_cache
        try:
            stored = await asyncio.to_thread(cache.read_many, [s.name for s in states])
        except Exception as exc:  # the database is down: DNS still answers, without a cache
            log.warning("could not read the MX cache: %s", exc)
            stored = {}
        for state in states:
            cached = stored.get(state.name)
            # A remembered DNS failure spares a burst of single probes; a run asks again,
            # since its retries of a failed domain are already spaced (temp_delays).
            if cached is not None and cache.fresh(cached) and not cached.resolution.is_temporary:
                self._resolved(state, cached)
            else:
                self.conductor.spawn(self._resolve(state, cached))

    async def _resolve(self, state: DomainState, previous: CachedMX | None) -> None:
        try:  # patient: a slow domain is asked again (slots held per try, not between)
            resolution = await self.ctx.mx_cache.refresh(
                state.name, previous=previous, defer_write=True, slots=self._dns_slots
            )
        except Exception as exc:  # an unexpected failure still answers every target
            log.exception("resolving %s failed", state.name)
            resolution = _failed_resolution(state.name, exc)
        self._resolved(state, resolution)

    def _resolved(self, state: DomainState, resolution: CachedMX) -> None:
        state.resolving = False
        state.resolution = resolution
        state.catch_all.finding = resolution.catch_all_fresh(utcnow(), self.options.catch_all_ttl)
        waiting, state.waiting = state.waiting, []
        for recipient in waiting:
            self._dispatch(recipient, state)
        if resolution.status is ResolutionStatus.DNS_ERROR:
            state.resolution = None  # failures are not kept: the next target asks DNS again

    def _dispatch(self, recipient: Recipient, state: DomainState) -> None:
        assert state.resolution is not None
        resolution = state.resolution
        settings = self.ctx.settings
        if resolution.status is ResolutionStatus.DNS_ERROR:
            email = recipient.address.normalized
            self.conductor.answered(recipient, no_mail_host(email, resolution, settings))
            return
        host = self._next_host(recipient, state)
        if host is None:
            outcome = recipient.last or no_mail_host(
                recipient.address.normalized, resolution, settings
            )
            self.conductor.finalize(recipient, outcome)
            return
        lane = self._lane(host, recipient.slow)
        lane.recipients.append(recipient)
        self.conductor.kick(lane)

    def _next_host(self, recipient: Recipient, state: DomainState) -> str | None:
        """The MX to ask: the first in the domain's order that the recipient has not failed
        to reach, hosts remembered dead last (RFC 5321 §5.1: try the next MX; the
        domain's A record is no fallback when it has MX records). A catch-all check
        stays with the MX tier it was made for: its finding means nothing elsewhere."""
        hosts = [h for h in state.mx_order() if h not in recipient.tried]
        if isinstance(recipient, CatchAllCheck):
            backup, _ = state.tracker_of(recipient)
            if backup is not None:
                hosts = [h for h in hosts if h == backup]
            else:
                hosts = [h for h in hosts if state.tracker(h) is state.catch_all]
        if not hosts:
            return None
        return self.ctx.behavior.live_first(hosts, self.ctx.settings.mx_dead_ttl)[0]

    # -- the MX host's lane -------------------------------------------------------------

    def _lane(self, host: str, slow: bool) -> MXLane:
        lane = self.lanes.get((host, slow))
        if lane is None:
            one_rcpt = self.ctx.behavior.one_rcpt(host)
            lane = self.lanes[(host, slow)] = MXLane(host, slow, one_rcpt=one_rcpt)
            self.look_up(lane)
        return lane

    def look_up(self, lane: MXLane) -> None:
        """Resolve the MX host's addresses before its first session: a session starts only
        once they are known, so a rate token is never spent waiting on DNS, and the server
        sees our connections as evenly spaced as the throttle gave them."""
        task = lane.ips = asyncio.ensure_future(
            resolve_host(
                lane.host,
                resolver=self.ctx.mx_cache.resolver,
                patience=self.ctx.settings.dns_max_timeout,
            )
        )
        self.conductor.watch(task)

        def done(task: asyncio.Task[list[str]]) -> None:
            if not task.cancelled():
                task.exception()  # a failure is answered by the session that awaits it
            if lane.recipients:
                self.conductor.kick(lane)

        task.add_done_callback(done)


def _failed_resolution(domain: str, exc: BaseException) -> CachedMX:
    now = utcnow()
    return CachedMX(MXResolution(domain, ResolutionStatus.DNS_ERROR, error=str(exc)), now, now)
