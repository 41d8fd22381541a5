"""Bulk verification: many addresses, few connections, every cap respected, one record a line.

How a list flows:

1. Each input line becomes a `Job` (a bad line is answered at once: invalid_syntax).
   A stored result younger than the reuse TTL answers a job without probing.
2. Jobs wait for their domain's MX (through the cache; one lookup per domain),
   then queue at their MX host. Domains without mail (NXDOMAIN, null MX) are
   answered from DNS.
3. Each MX host runs sessions, as many at once as its throttle slots allow. A
   session opens one connection and carries up to `rcpts_per_session` RCPTs,
   grouped by domain into transactions (MAIL FROM, RCPT..., RSET). After a
   domain's real RCPTs, one RCPT for a random local part tells whether the
   domain is catch-all, without spoiling the real answers. When the server
   offers PIPELINING, all of it, QUIT included, goes out as one group.
4. Replies about our batching (452 4.5.3, "one domain per transaction") are
   retried alone and the MX is remembered (for a week, in the behaviour cache) as
   one-RCPT-per-transaction; 421 and rate limits penalise the MX's throttle;
   greylisting and other temporary failures are retried on their schedules; a
   timeout is retried once in a slow lane (one session at a time, RFC 5321-sized
   budgets, at most a quarter of the global slots) so a tarpit never holds up
   the fast servers; an unreachable MX hands its jobs to the next MX.
5. Every final answer becomes a record (sink) and a row (store, in batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mailprobe.address import EmailAddress
from mailprobe.behavior import behavior_hint
from mailprobe.behavior import default_cache as behaviors
from mailprobe.classify import Reason, category_for_code, classify_error, classify_reply
from mailprobe.config import Settings
from mailprobe.dns import DNSLookupError, ResolutionStatus, resolve_host
from mailprobe.engine.core import default_mx_cache, flush_behavior, no_mx_result, probe_options
from mailprobe.flags import flags_for
from mailprobe.inputs import InputLine
from mailprobe.mxcache import CachedMX, MXCache
from mailprobe.smtp import Reply, SessionError, SMTPSession, StageRefused, effective_timeouts
from mailprobe.store import Store, StoreError
from mailprobe.store import queries as q
from mailprobe.store.models import utcnow
from mailprobe.throttle import Slot, Throttle, ThrottleError, ThrottleTimeout
from mailprobe.verdict import Verdict, decide

log = logging.getLogger(__name__)
SCHEDULER_TICK = 0.05  # seconds between looks when no rate token's due time is known
BATCH_WINDOW = 1.0  # seconds a lane waits for more addresses while the input is read
BEHAVIOR_FLUSH_INTERVAL = 2.0  # seconds between writes of the MX behaviour cache
MAX_UNSTORED_ROWS = 2000  # results waiting for the database before reading waits
READ_CHUNK = 200  # input lines the engine takes from the reader thread at a time
READ_AHEAD = 2000  # lines the reader thread may parse ahead of the engine
READ_PAUSE = 0.05  # seconds of admitting lines before the loop serves everything else
MAX_DOMAIN_STATES = 20_000  # past this many, domains with nothing in flight are forgotten
Sink = Callable[[dict[str, Any]], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class BulkOptions:
    rcpts_per_session: int = 20
    rcpts_per_transaction: int = 5
    catch_all_check: bool = True
    catch_all_ttl: float = 7 * 86400.0
    greylist_delays: tuple[float, ...] = (60.0, 300.0, 900.0)  # real greylisting: minutes
    temp_delays: tuple[float, ...] = (30.0, 120.0)
    slow_retry: bool = True
    slow_timeouts: tuple[float, float, float] = (60.0, 60.0, 300.0)  # connect, command, deadline
    reuse_ttl: float | None = 86400.0  # seconds; None never reuses
    reuse_since: datetime | None = None  # --resume: reuse anything stored since then
    wait_for_retries: bool = True
    max_in_flight: int = 5000  # jobs between reading and answering: bounds memory
    persist: bool = True
    dns_concurrency: int = 32  # MX lookups at once: a burst of new domains must not flood DNS


@dataclass(eq=False)
class Job:
    line_no: int
    raw: str
    address: EmailAddress
    attempts: int = 0
    greylists: int = 0
    temps: int = 0
    batching_retries: int = 0
    bounces: int = 0  # sessions that ended before this job's RCPT was sent
    probe: bool = False  # a catch-all probe of its domain, not an input line
    slow: bool = False
    alone: bool = False
    mx_index: int = 0
    last: dict[str, Any] | None = None

    @property
    def domain(self) -> str:
        return self.address.ascii_domain


@dataclass(eq=False)
class DomainState:
    name: str
    waiting: list[Job] = field(default_factory=list)
    resolution: CachedMX | None = None
    catch_all: bool | None = None  # known finding (from the cache or this run)
    resolving: bool = False
    probe: Job | None = None  # the catch-all probe under way, if any
    held: list[tuple[Job, dict[str, Any]]] = field(default_factory=list)  # accepted, waiting
    pending: int = 0  # input jobs of this domain not answered yet


@dataclass(eq=False)
class MXLane:
    """The jobs waiting for one MX host (the slow lane of a host is a lane of its own)."""

    host: str
    slow: bool
    jobs: deque[Job] = field(default_factory=deque)
    sessions: int = 0  # running now
    started: int = 0  # in this run
    waiting_since: float = 0.0  # when the lane last went from empty to having jobs
    one_rcpt: bool = False  # the server refuses several RCPTs in one transaction
    ips: asyncio.Task[list[str]] | None = None  # the host's addresses, looked up ahead


@dataclass
class Summary:
    total: int = 0
    by_verdict: dict[str, int] = field(default_factory=dict)
    reused: int = 0
    sessions: int = 0
    rcpts: int = 0
    pending: int = 0  # retries left unfinished when stopped
    elapsed: float = 0.0

    @property
    def rcpts_per_session(self) -> float:
        return self.rcpts / self.sessions if self.sessions else 0.0


class BulkVerifier:
    """One run over one input. `await run(lines)`; records go to `sink` as they are final."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        throttle: Throttle,
        *,
        sink: Sink,
        options: BulkOptions | None = None,
        cache: MXCache | None = None,
        port: int | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.throttle = throttle
        self.sink = sink
        self.options = options or BulkOptions()
        self.cache = cache or default_mx_cache(store, settings)
        self.port = port or settings.smtp_port
        self.summary = Summary()
        self._domains: dict[str, DomainState] = {}
        self._lanes: dict[tuple[str, bool], MXLane] = {}
        self._slots = asyncio.Semaphore(self.options.max_in_flight)
        self._outstanding = 0
        self._reading = True
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._rows: list[tuple[dict[str, Any], str]] = []
        self._writer_wake = asyncio.Event()
        self._rows_stored = asyncio.Event()  # the writer finished a flush (or failed one)
        self._store_failure: StoreError | None = None  # results could not be stored, for good
        self._dns_slots = asyncio.Semaphore(self.options.dns_concurrency)
        self._ready: set[MXLane] = set()  # lanes that may have jobs waiting
        self._active = 0  # sessions running
        self._active_slow = 0  # of which in slow lanes
        self._session_seconds = 0.5  # how long a session lasts (moving average, this run)
        self._retrying = 0  # input jobs waiting in a retry timer
        self._parked: set[DomainState] = set()  # domains whose catch-all check waits to retry
        self._unresolved: list[DomainState] = []  # new domains, looked up in one batch
        self._wake = asyncio.Event()
        self._stopping = False

    # -- the run ------------------------------------------------------------

    async def run(self, lines: Iterable[InputLine] | AsyncIterator[InputLine]) -> Summary:
        started = time.monotonic()
        writer = asyncio.create_task(self._writer())
        self._spawn(self._schedule())
        try:
            await self._read(lines)
            self._reading = False
            self._check_done()
            await self._done.wait()
        finally:
            self._stopping = True
            for timer in self._timers:
                timer.cancel()
            self.summary.pending = self._outstanding
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._writer_wake.set()
            with contextlib.suppress(StoreError):  # raised again by the last flush below
                await writer
            await self._flush_rows(final=True)
            await asyncio.to_thread(self._flush_mx_cache)
            await asyncio.to_thread(flush_behavior, self.store)
            self.summary.elapsed = time.monotonic() - started
        return self.summary

    async def _read(self, lines: Iterable[InputLine] | AsyncIterator[InputLine]) -> None:
        # Admit in batches (one store look-up each), never holding so many in-flight
        # slots in a batch that the next line could wait for them forever, and never
        # sitting on lines that came in while the input is slow to deliver more.
        batch_size = max(1, min(200, self.options.max_in_flight // 2))
        async for chunk in _chunks(lines):
            batch: list[Job] = []
            for line in chunk:
                if len(self._rows) >= MAX_UNSTORED_ROWS:
                    await self._room_for_rows()
                await self._slots.acquire()
                self._outstanding += 1
                self.summary.total += 1
                if line.address is None:
                    await self._finish_invalid(line)
                    continue
                batch.append(Job(line.line_no, line.raw, line.address))
                if len(batch) >= batch_size:
                    await self._admit(batch)
                    batch = []
            await self._admit(batch)

    async def _admit(self, jobs: list[Job]) -> None:
        """Answer jobs from stored results where allowed; route the rest."""
        if not jobs:
            return
        o = self.options
        reuse = o.reuse_ttl is not None or o.reuse_since is not None
        reused = await asyncio.to_thread(self._stored, jobs) if reuse else {}
        for job in jobs:
            row = reused.get(job.address.normalized)
            if row is not None:
                self.summary.reused += 1
                await self._emit(job, row, reused=True)
            else:
                self._domain(job.domain).pending += 1
                self._route(job)

    def _domain(self, name: str) -> DomainState:
        state = self._domains.get(name)
        if state is None:
            state = self._domains[name] = DomainState(name)
        return state

    def _forget_if_idle(self, state: DomainState) -> None:
        """Bound memory on lists with many domains: a domain with nothing left in flight is
        dropped once there are many (its MX and catch-all finding stay in the store)."""
        if (
            len(self._domains) > MAX_DOMAIN_STATES
            and state.pending == 0
            and state.probe is None
            and not state.waiting
            and not state.resolving
        ):
            self._domains.pop(state.name, None)

    def _stored(self, jobs: list[Job]) -> dict[str, dict[str, Any]]:
        o = self.options
        cutoffs = []
        if o.reuse_ttl is not None:
            cutoffs.append(utcnow() - timedelta(seconds=o.reuse_ttl))
        if o.reuse_since is not None:
            cutoffs.append(o.reuse_since)
        if not cutoffs:
            return {}
        with self.store.session() as session:
            rows = q.latest_results(session, (j.address.normalized for j in jobs), min(cutoffs))
            return {email: _row_result(row) for email, row in rows.items()}

    # -- routing --------------------------------------------------------------

    def _route(self, job: Job) -> None:
        state = self._domain(job.domain)
        if state.resolution is None:
            state.waiting.append(job)
            if not state.resolving:
                state.resolving = True
                if not self._unresolved:  # the first of this batch: look them up together
                    asyncio.get_running_loop().call_soon(self._resolve_batch)
                self._unresolved.append(state)
            return
        self._dispatch(job, state)

    def _resolve_batch(self) -> None:
        states, self._unresolved = self._unresolved, []
        if states:
            self._spawn(self._look_up_domains(states))

    async def _look_up_domains(self, states: list[DomainState]) -> None:
        """The stored MX of a batch of new domains in one query; DNS for the rest, whose
        answers are written in batches too (see `_writer`): a list of many domains must not
        cost a database round trip, let alone a commit, per domain."""
        try:
            stored = await asyncio.to_thread(self.cache.read_many, [s.name for s in states])
        except Exception as exc:  # the database is down: DNS still answers, without a cache
            log.warning("could not read the MX cache: %s", exc)
            stored = {}
        for state in states:
            cached = stored.get(state.name)
            if cached is not None and self.cache.fresh(cached):
                self._resolved(state, cached)
            else:
                self._spawn(self._resolve(state, cached))

    async def _resolve(self, state: DomainState, previous: CachedMX | None) -> None:
        try:
            async with self._dns_slots:
                resolution = await self.cache.refresh(
                    state.name, previous=previous, defer_write=True
                )
        except Exception as exc:  # an unexpected failure still answers every job
            log.exception("resolving %s failed", state.name)
            resolution = _failed_resolution(state.name, exc)
        self._resolved(state, resolution)

    def _resolved(self, state: DomainState, resolution: CachedMX) -> None:
        state.resolving = False
        state.resolution = resolution
        state.catch_all = resolution.catch_all_fresh(utcnow(), self.options.catch_all_ttl)
        waiting, state.waiting = state.waiting, []
        for job in waiting:
            self._dispatch(job, state)
        if resolution.status is ResolutionStatus.DNS_ERROR:
            state.resolution = None  # failures are not kept: the next job asks DNS again

    def _dispatch(self, job: Job, state: DomainState) -> None:
        assert state.resolution is not None
        resolution = state.resolution
        if resolution.status is ResolutionStatus.DNS_ERROR:
            self._after(job, no_mx_result(job.address.normalized, resolution, self.settings))
            return
        hosts = resolution.resolution.hosts
        if job.mx_index >= len(hosts):
            result = job.last or no_mx_result(job.address.normalized, resolution, self.settings)
            self._finalize(job, result)
            return
        lane = self._lane(hosts[job.mx_index], job.slow)
        lane.jobs.append(job)
        self._kick(lane)

    def _lane(self, host: str, slow: bool) -> MXLane:
        lane = self._lanes.get((host, slow))
        if lane is None:
            lane = self._lanes[(host, slow)] = MXLane(host, slow, one_rcpt=behaviors.one_rcpt(host))
            self._look_up(lane)
        return lane

    def _look_up(self, lane: MXLane) -> None:
        """Resolve the MX host's addresses before its first session: a session starts only
        once they are known, so a rate token is never spent waiting on DNS, and the server
        sees our connections as evenly spaced as the throttle gave them."""
        task = lane.ips = asyncio.ensure_future(
            resolve_host(lane.host, resolver=self.cache.resolver)
        )
        self._tasks.add(task)

        def done(task: asyncio.Task[list[str]]) -> None:
            self._tasks.discard(task)
            if not task.cancelled():
                task.exception()  # a failure is answered by the session that awaits it
            if lane.jobs:
                self._kick(lane)

        task.add_done_callback(done)

    def _kick(self, lane: MXLane) -> None:
        """The lane has work: let the scheduler look."""
        if lane not in self._ready:
            lane.waiting_since = time.monotonic()
        self._ready.add(lane)
        self._wake.set()

    def _worth_starting(self, lane: MXLane, now: float) -> bool:
        """While the input is still being read, a session waits (up to BATCH_WINDOW) for a
        full load of RCPTs: a session that carries one address spends a rate token the
        busiest MX cannot spare."""
        if not lane.jobs or lane.sessions >= self._cap(lane):
            return False
        if lane.ips is not None and not lane.ips.done():
            return False  # its addresses are still being looked up (it is kicked when known)
        return (
            not self._reading
            or len(lane.jobs) >= self.options.rcpts_per_session
            or now - lane.waiting_since >= BATCH_WINDOW
        )

    async def _schedule(self) -> None:
        """Start sessions while the caps allow, busiest lane first.

        The lane that needs the longest (see `_time_left`) is the run's critical path, so
        it gets the next free slot. A lane is only asked for when the throttle can give a slot
        right now (acquire with no wait), so no task sits on a slot it cannot use.
        While that lane waits for its MX's next rate token, one global slot is kept for it
        (see `_worth_reserving`): otherwise sessions to other MXs fill every slot in the
        meantime and the critical lane starts late, every time, for the whole run.
        When nothing can start, wait for a session to end or a rate token to come due.
        """
        global_cap = self.throttle.policy.global_limits.max_concurrency
        while not self._stopping:
            self._wake.clear()
            started = False
            next_due = SCHEDULER_TICK
            if self._active < global_cap:
                now = time.monotonic()
                lanes = sorted(
                    (lane for lane in self._ready if self._worth_starting(lane, now)),
                    key=self._time_left,
                    reverse=True,
                )
                self._ready = {lane for lane in self._ready if lane.jobs}
                reserved = 0
                for rank, lane in enumerate(lanes):
                    if self._active >= global_cap - reserved:
                        break
                    if lane.slow and self._active_slow >= _slow_share(global_cap):
                        continue
                    try:
                        slot = await self.throttle.acquire(lane.host, wait=0)
                    except ThrottleTimeout as exc:
                        if exc.retry_after is not None:  # wake exactly when the token is due
                            next_due = min(next_due, exc.retry_after)
                            if rank == 0 and self._worth_reserving(lane, exc, global_cap):
                                reserved = 1
                        continue
                    except ThrottleError as exc:  # the shared throttle is down: never unthrottled
                        for job in _drain(lane.jobs):
                            self._after(job, _error_result(job, lane.host, "connection_failed",
                                                           str(exc)))  # fmt: skip
                        continue
                    lane.sessions += 1
                    lane.started += 1
                    self._active += 1
                    self._active_slow += lane.slow
                    started = True
                    self._spawn(self._session(lane, slot))
            if not started:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(next_due, 0.001))

    def _worth_reserving(self, lane: MXLane, refused: ThrottleTimeout, global_cap: int) -> bool:
        """Keep a global slot for this lane until its MX's rate token is due?

        Only when the lane is the bottleneck: the other lanes' sessions, at the session
        length seen so far in this run, fit in the remaining slots within the time this
        lane needs anyway. Then the reserved slot costs nothing; otherwise the global
        concurrency cap is what bounds the run and every slot is worth filling."""
        if refused.limited_by != "per-MX rate" or global_cap < 4:
            return False
        critical = self._time_left(lane)
        per_session = self.options.rcpts_per_session
        others = sum(
            -(-len(other.jobs) // per_session) for other in self._ready if other is not lane
        )
        return critical >= others * self._session_seconds / (global_cap - 1)

    def _time_left(self, lane: MXLane) -> float:
        """A lower bound on how long this lane still needs: its sessions at its MX's rate,
        plus a greylisting delay if we have never talked to it (it may greylist us)."""
        sessions = -(-len(lane.jobs) // self.options.rcpts_per_session)
        left = sessions / self.throttle.policy.limits_for(lane.host).rps
        if lane.started == 0 and self.options.greylist_delays:
            left += self.options.greylist_delays[0]
        return left

    def _cap(self, lane: MXLane) -> int:
        return 1 if lane.slow else self.throttle.policy.limits_for(lane.host).max_concurrency

    # -- one SMTP session ---------------------------------------------------------

    async def _session(self, lane: MXLane, slot: Slot) -> None:
        started = time.monotonic()
        try:
            await self._converse(lane)
        finally:
            if not lane.slow:  # a tarpit's minutes say nothing of a normal session
                self._session_seconds += 0.1 * (time.monotonic() - started - self._session_seconds)
            lane.sessions -= 1
            self._active -= 1
            self._active_slow -= lane.slow
            try:
                await self.throttle.release(slot)
            except ThrottleError as exc:  # a Redis lease frees the slot by itself anyway
                log.warning("could not release throttle slot for %s: %s", lane.host, exc)
            if lane.jobs:
                self._ready.add(lane)
                lane.waiting_since = 0.0  # leftovers go at once
            self._wake.set()

    async def _converse(self, lane: MXLane) -> None:
        batch = _take(lane.jobs, self.options.rcpts_per_session)
        if not batch:
            return
        if lane.ips is None:
            self._look_up(lane)
        assert lane.ips is not None
        try:
            ips = await asyncio.shield(lane.ips)
        except DNSLookupError as exc:
            lane.ips = None  # looked up again by the next session
            for job in batch:
                self._after(job, _error_result(job, lane.host, "dns_error", str(exc)))
            return
        if not ips:
            lane.ips = None
            for job in batch:
                job.mx_index += 1
                self._route(job)
            return
        options = probe_options(
            self.settings, port=self.port, behavior_hint=behavior_hint(lane.host)
        )
        timeouts = effective_timeouts(
            options["connect_timeout"], options["command_timeout"], options["behavior_hint"]
        )
        deadline_per_rcpt = options["deadline"]
        if lane.slow:
            connect, command, deadline_per_rcpt = self.options.slow_timeouts
            timeouts = type(timeouts)(connect, command)
        session = SMTPSession(
            mx_host=lane.host,
            helo_domain=options["helo_domain"],
            port=self.port,
            connect_to=ips[0],
            connect_timeout=timeouts.connect,
            command_timeout=timeouts.command,
            source_address=options["source_address"],
            starttls=options["starttls"],
            tls_context=options["tls_context"],
        )
        self.summary.sessions += 1
        pending = deque(batch)
        try:
            async with asyncio.timeout(deadline_per_rcpt + timeouts.command * len(batch)):
                try:
                    await session.open()
                except StageRefused as refused:
                    for job in _drain(pending):
                        self._after(job, self._reply_result(job, session, refused.reply, 0))
                    return
                header = len(session.transcript)
                await self._transactions(lane, session, pending, header, options["mail_from"])
        except SessionError as exc:
            self._session_failed(lane, session, pending, exc.kind.value, str(exc))
        except TimeoutError:
            self._session_failed(
                lane, session, pending, "timeout", f"timeout at {session.stage}: session deadline"
            )
        finally:
            await session.close()

    async def _transactions(
        self, lane: MXLane, session: SMTPSession, pending: deque[Job], header: int, mail_from: str
    ) -> None:
        if session.pipelining and self.settings.smtp_pipelining:
            await self._grouped(lane, session, pending, header, mail_from)
            return
        while pending:
            domain = pending[0].domain
            txn = self._next_transaction(lane, pending)
            span = (header, len(session.transcript))
            accepted = await self._one_by_one(lane, session, txn, pending, span, mail_from)
            if accepted is None:
                continue  # MAIL refused: every RCPT got that answer, no catch-all check
            # The catch-all check runs with the domain's first transaction, accepted or not,
            # so that a greylisting server's clock runs for the check and the real RCPTs at once.
            await self._settle(session, self._domain(domain), accepted, mail_from)

    def _next_transaction(self, lane: MXLane, pending: deque[Job]) -> list[Job]:
        """The next transaction's jobs: one domain, up to rcpts_per_transaction (one for an
        MX that refuses more, or for a job that must be asked alone)."""
        domain = pending[0].domain
        size = 1 if lane.one_rcpt or pending[0].alone else self.options.rcpts_per_transaction
        txn = [pending.popleft()]
        while pending and len(txn) < size and pending[0].domain == domain and not pending[0].alone:
            txn.append(pending.popleft())
        return txn

    async def _one_by_one(
        self,
        lane: MXLane,
        session: SMTPSession,
        txn: list[Job],
        pending: deque[Job],
        span: tuple[int, int],
        mail_from: str,
    ) -> list[tuple[Job, dict[str, Any]]] | None:
        """One transaction, each command waiting for its reply (no PIPELINING offered)."""
        accepted: list[tuple[Job, dict[str, Any]]] = []
        answered = 0
        try:
            try:
                await session.mail(mail_from)
            except StageRefused as refused:
                for job in txn:
                    self._after(job, self._reply_result(job, session, refused.reply, 0, *span))
                answered = len(txn)
                await session.rset()
                return None
            for job in txn:
                sent = time.monotonic()
                reply = await session.rcpt(job.address)
                answered += 1
                self._rcpt_answered(lane, session, job, reply, sent, span, accepted)
            await session.rset()
        except SessionError:  # nothing is lost: unanswered jobs go back first in line
            self._ask_again(accepted)
            pending.extendleft(reversed(txn[answered:]))
            raise
        return accepted

    async def _grouped(
        self, lane: MXLane, session: SMTPSession, pending: deque[Job], header: int, mail_from: str
    ) -> None:
        """The whole session as one RFC 2920 group: every transaction (MAIL, its RCPTs,
        RSET), each new domain's catch-all check right after its first transaction, and
        QUIT. Replies are read in order and paired with the plan: the session costs one
        round trip after EHLO, not one per command."""
        txns: list[list[Job]] = []
        while pending:
            txns.append(self._next_transaction(lane, pending))
        group: list[tuple[str, tuple[bytes, ...]]] = []
        plan: list[tuple[str, int, Job | None]] = []  # (step, transaction, job) per command
        probes: list[Job] = []
        for t, txn in enumerate(txns):
            group.append(("mail", session.mail_command(mail_from)))
            group += [("rcpt", session.rcpt_command(job.address)) for job in txn]
            group.append(("rset", (b"RSET",)))
            plan += [("mail", t, None), *(("rcpt", t, job) for job in txn), ("end", t, None)]
            state = self._domain(txn[0].domain)
            if self._needs_check(state):
                probe = state.probe = self._probe_job(state)
                probes.append(probe)
                group.append(("mail", session.mail_command(mail_from)))
                group.append(("rcpt", session.rcpt_command(probe.address)))
                group.append(("rset", (b"RSET",)))
                plan += [("probe-mail", t, probe), ("probe", t, probe), ("probe-end", t, probe)]
        group.append(("quit", (b"QUIT",)))
        plan.append(("quit", -1, None))

        span = (header, len(session.transcript))
        sent = time.monotonic()
        refused: dict[int, Reply | None] = {}  # per transaction: its MAIL's refusal
        probe_refused: Reply | None = None  # the check's MAIL, read just before its RCPT
        accepted: dict[int, list[tuple[Job, dict[str, Any]]]] = {}
        asked: set[int] = set()  # ids of jobs and probes that got their answer
        step = 0
        try:
            async with contextlib.aclosing(session.pipeline(group)) as replies:
                async for reply in replies:
                    kind, t, job = plan[step]
                    step += 1
                    if kind == "mail":
                        refused[t] = None if reply.ok else reply
                    elif kind == "probe-mail":
                        probe_refused = None if reply.ok else reply
                    elif kind == "rcpt" and job is not None:
                        asked.add(id(job))
                        refusal = refused.get(t)
                        if refusal is not None:  # "503 need MAIL": the refusal answers it
                            self._after(job, self._reply_result(job, session, refusal, 0, *span))
                        else:
                            got = accepted.setdefault(t, [])
                            self._rcpt_answered(lane, session, job, reply, sent, span, got)
                    elif kind == "end":
                        self._release(self._domain(txns[t][0].domain), accepted.pop(t, []))
                    elif kind == "probe" and job is not None:
                        asked.add(id(job))
                        answer = probe_refused or reply
                        verdict = classify_reply(answer.stage, answer.code, answer.message,
                                                 mx_host=session.mx_host)  # fmt: skip
                        self._probe_answer(job, verdict.reason)
        except SessionError:
            for got in accepted.values():
                self._ask_again(got)
            for probe in probes:
                if id(probe) not in asked:  # never answered: the next session checks again
                    state = self._domain(probe.domain)
                    state.probe = None
                    held, state.held = state.held, []
                    self._ask_again(held)
            unanswered = [job for txn in txns for job in txn if id(job) not in asked]
            pending.extendleft(reversed(unanswered))  # the first was being asked
            if unanswered or step < len(plan) - 1:
                raise
            # only QUIT's reply went missing: every answer is in

    def _needs_check(self, state: DomainState) -> bool:
        """No catch-all finding for this domain and no check under way: ask in this session."""
        return self.options.catch_all_check and state.catch_all is None and state.probe is None

    def _release(self, state: DomainState, accepted: list[tuple[Job, dict[str, Any]]]) -> None:
        """Accepted answers of a transaction: they wait for a catch-all check under way;
        otherwise they go, with the finding if there is one (else catch-all unknown)."""
        if self.options.catch_all_check and state.catch_all is None and state.probe is not None:
            state.held.extend(accepted)
        else:
            for job, result in accepted:
                self._after(job, result)

    @staticmethod
    def _probe_job(state: DomainState) -> Job:
        local = f"mp-{secrets.token_hex(8)}"
        return Job(0, "", EmailAddress(local, state.name, state.name), probe=True)

    def _ask_again(self, accepted: list[tuple[Job, dict[str, Any]]]) -> None:
        """The session broke before the catch-all check could give these accepted RCPTs
        their meaning: ask them again in a new session (a few times, then answer with
        what we have: accepted, catch-all unknown)."""
        for job, result in accepted:
            job.bounces += 1
            if job.bounces <= 2:
                self._route(job)
            else:
                self._after(job, result)

    def _rcpt_answered(
        self,
        lane: MXLane,
        session: SMTPSession,
        job: Job,
        reply: Reply,
        sent: float,
        span: tuple[int, int],
        accepted: list[tuple[Job, dict[str, Any]]],
    ) -> None:
        self.summary.rcpts += 1
        elapsed = int((time.monotonic() - sent) * 1000)
        result = self._reply_result(job, session, reply, elapsed, *span)
        if result["reason"] == Reason.ACCEPTED and not job.probe:
            accepted.append((job, result))  # waits for the catch-all check
        else:
            self._after(job, result)
        if result["reason"] == Reason.TOO_MANY_RECIPIENTS and not lane.one_rcpt:
            lane.one_rcpt = True
            behaviors.mark_one_rcpt(lane.host)  # later runs (and workers) know it

    async def _settle(
        self,
        session: SMTPSession,
        state: DomainState,
        accepted: list[tuple[Job, dict[str, Any]]],
        mail_from: str,
    ) -> None:
        """An accepted RCPT means something only once we know whether the domain is catch-all.

        The check is a RCPT for a local part that cannot exist, in a transaction of its own
        after the real ones, so it can neither spoil nor be spoilt by them (a server that
        limits RCPTs per transaction, or greylists each new triplet). Accepted answers wait
        for its outcome; a greylisted probe is retried like any greylisted address.
        """
        if not self._needs_check(state):
            self._release(state, accepted)  # known, or a check under way releases them
            return
        state.held.extend(accepted)
        probe = state.probe = self._probe_job(state)
        try:
            await session.mail(mail_from)
            reply = await session.rcpt(probe.address)
            await session.rset()
        except StageRefused as refused:
            reply = refused.reply
        except SessionError:
            self._probe_answer(probe, Reason.CONNECTION_FAILED)
            raise
        verdict = classify_reply(reply.stage, reply.code, reply.message, mx_host=session.mx_host)
        self._probe_answer(probe, verdict.reason)

    def _probe_answer(self, probe: Job, reason: str) -> None:
        state = self._domain(probe.domain)
        found: bool | None = None
        if reason == Reason.ACCEPTED:
            found = True
        elif reason in {Reason.MAILBOX_NOT_FOUND, Reason.MAILBOX_DISABLED,
                        Reason.MAILBOX_UNAVAILABLE}:  # fmt: skip
            found = False
        elif reason in _RETRYABLE and probe.greylists < len(self.options.greylist_delays):
            probe.greylists += 1
            self._retry(probe, self.options.greylist_delays[probe.greylists - 1])
            self._parked.add(state)  # its held answers now wait for a retry too
            self._check_done()
            return
        state.probe = None
        if found is not None:
            state.catch_all = found
            if host := self._lowest_mx(state):
                behaviors.mark_catch_all(host, found)
            self._spawn(asyncio.to_thread(self.cache.save_catch_all, state.name, found))
        held, state.held = state.held, []
        for job, result in held:
            self._after(job, result)

    @staticmethod
    def _lowest_mx(state: DomainState) -> str | None:
        return state.resolution.lowest_mx if state.resolution is not None else None

    def _session_failed(
        self, lane: MXLane, session: SMTPSession, pending: deque[Job], kind: str, error: str
    ) -> None:
        jobs = _drain(pending)
        if session.stage in {"rcpt", "rset", "mail"}:
            # At RCPT the first job was being asked when the session broke; the others
            # (all of them, at MAIL or RSET) never were: they go back to the lane for a
            # new session (a few times, then as failures).
            asked = 1 if session.stage == "rcpt" else 0
            for job in jobs[asked:]:
                job.bounces += 1
                if job.bounces <= 2:
                    self._route(job)
                else:
                    self._after(job, _error_result(job, lane.host, kind, error, session.stage))
            jobs = jobs[:asked]
        for job in jobs:
            result = _error_result(job, lane.host, kind, error, stage=session.stage)
            result["transcript"] = list(session.transcript)
            result["tls"] = session.tls
            if kind == "connection_failed" and session.stage == "connect":
                job.last = result
                job.mx_index += 1  # unreachable: the next MX takes over
                self._route(job)
            else:
                self._after(job, result)

    def _reply_result(
        self,
        job: Job,
        session: SMTPSession,
        reply: Any,
        elapsed_ms: int,
        header: int | None = None,
        start: int | None = None,
    ) -> dict[str, Any]:
        verdict = classify_reply(reply.stage, reply.code, reply.message, mx_host=session.mx_host)
        transcript = list(session.transcript)
        if header is not None and start is not None:
            transcript = transcript[:header] + transcript[start:]
        return {
            "ok": True,
            "category": category_for_code(reply.code).value,
            "code": reply.code,
            "message": reply.message,
            "mx_host": session.mx_host,
            "helo_domain": session.helo_domain,
            "elapsed_ms": elapsed_ms,
            "error": None,
            "email": job.address.normalized,
            "stage": reply.stage,
            "enhanced_status": reply.enhanced,
            "reason": verdict.reason.value,
            "rule": verdict.rule,
            "error_kind": None,
            "tls": session.tls,
            "transcript": transcript,
        }

    # -- what to do with a result -------------------------------------------------

    def _after(self, job: Job, result: dict[str, Any]) -> None:
        """Retry what deserves a retry; answer the rest."""
        if job.probe:
            self._probe_answer(job, result["reason"])
            return
        job.attempts += 1
        job.last = result
        o = self.options
        reason = result["reason"]
        host = result.get("mx_host") or ""
        behaviors.record(
            host or job.domain,
            latency_ms=result.get("elapsed_ms") or 0,
            error_kind=result.get("error_kind"),
            code=result.get("code"),
            reason=reason,
        )
        if reason == Reason.TOO_MANY_RECIPIENTS and job.batching_retries < 2:
            job.batching_retries += 1
            job.alone = True
            job.attempts -= 1  # our batching, not the address, was refused
            self._route(job)
        elif reason == Reason.GREYLISTED and job.greylists < len(o.greylist_delays):
            job.greylists += 1
            self._retry(job, o.greylist_delays[job.greylists - 1])
        elif reason in {Reason.RATE_LIMITED, Reason.SERVICE_UNAVAILABLE}:
            if host:
                self._spawn(self.throttle.penalize(host, reason=reason))
            self._retry_temp(job)
        elif reason == Reason.TIMEOUT and o.slow_retry and not job.slow:
            job.slow = True
            self._retry(job, 0.0)
        elif reason in {Reason.TEMP_FAILURE, Reason.CONNECTION_FAILED, "dns_error"}:
            self._retry_temp(job)
        else:
            self._finalize(job, result)

    def _retry_temp(self, job: Job) -> None:
        if job.temps < len(self.options.temp_delays):
            job.temps += 1
            self._retry(job, self.options.temp_delays[job.temps - 1])
        else:
            assert job.last is not None
            self._finalize(job, job.last)

    def _retry(self, job: Job, delay: float) -> None:
        if self._stopping:
            return
        if job.probe:

            def probe_again() -> None:
                self._parked.discard(self._domain(job.domain))
                self._route(job)

            self._later(delay, probe_again)
            return
        self._retrying += 1

        def again() -> None:
            self._retrying -= 1
            self._route(job)

        self._later(delay, again)
        self._check_done()

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            action()

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def _finalize(self, job: Job, result: dict[str, Any]) -> None:
        if job.probe:  # a catch-all probe is no input line: it only settles its domain
            self._probe_answer(job, Reason.CONNECTION_FAILED)
            return
        self._spawn(self._emit(job, result))

    async def _finish_invalid(self, line: InputLine) -> None:
        result = {
            "ok": False,
            "category": "unknown",
            "code": None,
            "message": "",
            "mx_host": None,
            "elapsed_ms": 0,
            "error": line.error,
            "email": line.raw,
            "stage": "input",
            "enhanced_status": None,
            "reason": "invalid_syntax",
            "error_kind": "bad_input",
            "transcript": [],
        }
        record = _record(
            line.line_no,
            line.raw,
            None,
            result,
            Verdict.UNDELIVERABLE,
            "invalid_syntax",
            None,
            attempts=0,
        )
        await self._deliver(record)

    async def _emit(self, job: Job, result: dict[str, Any], reused: bool = False) -> None:
        state = self._domains.get(job.domain)
        catch_all = result.get("catch_all") if reused else (state.catch_all if state else None)
        dns_status = result.get("dns_status")
        if dns_status is None and state is not None and state.resolution is not None:
            dns_status = state.resolution.status.value
        if reused and result.get("verdict"):
            verdict, shown = Verdict(result["verdict"]), result["verdict_reason"]
        else:
            verdict, shown = decide(result["reason"], catch_all=catch_all, dns_status=dns_status)
        record = _record(
            job.line_no,
            job.raw,
            job.address,
            result,
            verdict,
            shown,
            catch_all,
            attempts=job.attempts,
            reused=reused,
        )
        if self.options.persist and not reused:
            row = {**result, "attempts": job.attempts, "verdict_reason": shown,
                   "catch_all": catch_all}  # fmt: skip
            self._rows.append((row, verdict.value))
            if len(self._rows) >= 200:
                self._writer_wake.set()
        if state is not None and not reused:
            state.pending -= 1
            self._forget_if_idle(state)
        await self._deliver(record)

    async def _deliver(self, record: dict[str, Any]) -> None:
        verdicts = self.summary.by_verdict
        verdicts[record["verdict"]] = verdicts.get(record["verdict"], 0) + 1
        maybe = self.sink(record)
        if maybe is not None:
            await maybe
        self._outstanding -= 1
        self._slots.release()
        self._check_done()

    def _check_done(self) -> None:
        if self._reading:
            return
        # With --no-wait the run ends once every unanswered job only waits for a retry
        # (or for its domain's catch-all check): those stay pending for --resume.
        waiting = 0
        if not self.options.wait_for_retries:
            waiting = self._retrying + sum(len(state.held) for state in self._parked)
        if self._outstanding == waiting:
            self._done.set()

    # -- persistence --------------------------------------------------------------

    async def _writer(self) -> None:
        """Batch result rows into the store every 0.2 s (or 200 rows), and what the MX
        hosts showed every few seconds, so a long run keeps both as it goes."""
        last_behavior = time.monotonic()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._writer_wake.wait(), 0.2)
            self._writer_wake.clear()
            if self._rows:
                await self._flush_rows()
            await asyncio.to_thread(self._flush_mx_cache)
            if time.monotonic() - last_behavior >= BEHAVIOR_FLUSH_INTERVAL:
                last_behavior = time.monotonic()
                try:
                    await asyncio.to_thread(flush_behavior, self.store)
                except StoreError as exc:  # statistics: try again next time
                    log.warning("could not store MX behaviour yet: %s", exc)

    def _flush_mx_cache(self) -> None:
        """Write the MX answers DNS gave since the last flush, in one transaction."""
        try:
            self.cache.flush()
        except StoreError as exc:  # a cache: the next flush (or the next run) tries again
            log.warning("could not store MX answers yet: %s", exc)

    async def _flush_rows(self, final: bool = False) -> None:
        """Store the batched rows. A failing database keeps them for the next try (the
        records are already in the output); at the end of the run, or once too many wait,
        the failure is raised: the run stops with the database's reason."""
        rows, self._rows = self._rows, []
        try:
            if rows:
                await asyncio.to_thread(self._store_rows, rows)
        except StoreError as exc:
            self._rows = rows + self._rows
            if final or len(self._rows) >= MAX_UNSTORED_ROWS:
                self._store_failure = exc
                raise
            log.warning("could not store %d results yet (will retry): %s", len(rows), exc)
        finally:
            self._rows_stored.set()

    def _store_rows(self, rows: list[tuple[dict[str, Any], str]]) -> None:
        with self.store.session() as session:
            q.add_results(session, rows)

    async def _room_for_rows(self) -> None:
        """Backpressure: when the database writes slower than the servers answer, reading
        waits, so the results waiting to be stored (and memory) stay bounded."""
        while len(self._rows) >= MAX_UNSTORED_ROWS:
            if self._store_failure is not None:
                raise self._store_failure
            self._rows_stored.clear()
            self._writer_wake.set()
            await self._rows_stored.wait()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("bulk verifier task failed", exc_info=task.exception())


# -- helpers ----------------------------------------------------------------------


async def _chunks(
    lines: Iterable[InputLine] | AsyncIterator[InputLine],
) -> AsyncIterator[list[InputLine]]:
    if isinstance(lines, AsyncIterator):
        async for line in lines:
            yield [line]
        return
    async for chunk in _read_ahead(lines):
        yield chunk


async def _read_ahead(
    lines: Iterable[InputLine], chunk: int = READ_CHUNK, ahead: int = READ_AHEAD
) -> AsyncIterator[list[InputLine]]:
    """Read and parse `lines` in a thread of their own; yield what has come, in chunks.

    A plain iterator would run on the event loop: a stdin that is slow to write would
    stall every session in flight (and a server drops a silent client), and parsing a
    big file would delay the first sessions. A daemon thread, rather than
    asyncio.to_thread, because a read blocked on stdin must not keep the process
    alive after Ctrl-C. The engine takes whatever lines are there whenever it asks, so
    a line that comes before a pause (a slow pipe, a person typing) is probed at once;
    at most `ahead` lines wait unread, so memory stays bounded.
    """
    loop = asyncio.get_running_loop()
    buffer: deque[InputLine | _EndOfInput] = deque()  # appends and pops are thread-safe
    room = threading.Semaphore(ahead)
    stop = threading.Event()
    wake = asyncio.Event()
    asleep = [False]  # the engine waits for a line: the reader must wake it

    def put(item: InputLine | _EndOfInput) -> None:
        buffer.append(item)
        if asleep[0]:
            asleep[0] = False
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody reads
                loop.call_soon_threadsafe(wake.set)

    def produce() -> None:
        try:
            for line in lines:
                while not room.acquire(timeout=0.5):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                put(line)
            put(_EndOfInput(None))
        except BaseException as exc:  # re-raised in the reading task, where it belongs
            put(_EndOfInput(exc))

    threading.Thread(target=produce, name="mailprobe-reader", daemon=True).start()
    last_pause = time.monotonic()
    try:
        while True:
            if not buffer:
                wake.clear()
                asleep[0] = True
                if not buffer:  # looked again after saying so: no wake-up can be missed
                    await wake.wait()
                asleep[0] = False
            taken: list[InputLine] = []
            end: _EndOfInput | None = None
            while buffer and len(taken) < chunk:
                item = buffer.popleft()
                if isinstance(item, _EndOfInput):
                    end = item
                    break
                taken.append(item)
            if taken:
                room.release(len(taken))
                yield taken
                if time.monotonic() - last_pause >= READ_PAUSE:  # replies and lookups too
                    await asyncio.sleep(0)
                    last_pause = time.monotonic()
            if end is not None:
                if end.error is not None:
                    raise end.error
                return
    finally:
        stop.set()


@dataclass(frozen=True, slots=True)
class _EndOfInput:
    error: BaseException | None  # why the input ended early, if it did


_RETRYABLE = {
    Reason.GREYLISTED,
    Reason.TEMP_FAILURE,
    Reason.RATE_LIMITED,
    Reason.SERVICE_UNAVAILABLE,
    Reason.TIMEOUT,
    Reason.CONNECTION_FAILED,
    Reason.TOO_MANY_RECIPIENTS,
}


def _slow_share(global_cap: int) -> int:
    """Global slots the slow lanes may hold together: a list full of tarpits gets its
    second chance without holding up the fast servers."""
    return max(1, global_cap // 4)


def _take(jobs: deque[Job], n: int) -> list[Job]:
    """Up to n jobs, those of the first job's domain first (fewer transactions)."""
    if not jobs:
        return []
    first = jobs[0].domain
    same = [j for j in jobs if j.domain == first][:n]
    taken = set(map(id, same))
    rest = [j for j in jobs if id(j) not in taken]
    batch = same + rest[: n - len(same)]
    taken |= set(map(id, batch))
    remaining = [j for j in jobs if id(j) not in taken]
    jobs.clear()
    jobs.extend(remaining)
    return batch


def _drain(jobs: deque[Job]) -> list[Job]:
    out = list(jobs)
    jobs.clear()
    return out


def _error_result(
    job: Job, mx_host: str, kind: str, error: str, stage: str = "connect"
) -> dict[str, Any]:
    reason = "dns_error" if kind == "dns_error" else classify_error(kind).value
    return {
        "ok": False,
        "category": "unknown",
        "code": None,
        "message": "",
        "mx_host": mx_host,
        "elapsed_ms": 0,
        "error": error,
        "email": job.address.normalized,
        "stage": stage,
        "enhanced_status": None,
        "reason": reason,
        "rule": None,
        "error_kind": kind,
        "tls": False,
        "transcript": [],
    }


def _failed_resolution(domain: str, exc: BaseException) -> CachedMX:
    from mailprobe.dns import MXResolution

    now = utcnow()
    return CachedMX(MXResolution(domain, ResolutionStatus.DNS_ERROR, error=str(exc)), now, now)


def _row_result(row: Any) -> dict[str, Any]:
    shown, catch_all = row.verdict_reason, row.catch_all
    if shown is None:  # stored before schema 0002, which keeps both
        shown = _shown_reason(row.verdict, row.reason)
        catch_all = True if row.verdict == "risky" and row.reason == "accepted" else None
    return {
        "category": row.category,
        "code": row.code,
        "message": row.message,
        "mx_host": row.mx_host,
        "elapsed_ms": row.elapsed_ms,
        "reason": row.reason,
        "enhanced_status": row.enhanced_status,
        "stage": row.stage,
        "error": row.error,
        "verdict": row.verdict,
        "verdict_reason": shown,
        "catch_all": catch_all,
        "attempts": row.attempts,
        "created_at": row.created_at.isoformat(),
    }


def _shown_reason(verdict: str | None, reason: str) -> str:
    return (
        decide(reason, catch_all=None)[1]
        if verdict is None
        else ("catch_all" if verdict == "risky" and reason == "accepted" else reason)
    )


def _record(
    line_no: int,
    raw: str,
    address: EmailAddress | None,
    result: dict[str, Any],
    verdict: Verdict,
    reason: str,
    catch_all: bool | None,
    *,
    attempts: int,
    reused: bool = False,
) -> dict[str, Any]:
    flags = flags_for(address.local, address.ascii_domain).as_dict() if address else {}
    return {
        "line": line_no,
        "email": raw,
        "verdict": verdict.value,
        "reason": reason,
        "category": result.get("category"),
        "code": result.get("code"),
        "enhanced_status": result.get("enhanced_status"),
        "message": result.get("message") or "",
        "mx_host": result.get("mx_host"),
        "catch_all": catch_all,
        "flags": flags,
        "attempts": result.get("attempts", attempts) if reused else attempts,
        "elapsed_ms": result.get("elapsed_ms") or 0,
        "reused": reused,
    }


async def verify(
    lines: Iterable[InputLine] | AsyncIterator[InputLine],
    sink: Sink,
    *,
    settings: Settings,
    options: BulkOptions | None = None,
    store: Store | None = None,
    throttle: Throttle | None = None,
) -> Summary:
    """Verify every line with the settings' store and throttle (the embedded defaults)."""
    from mailprobe.engine.core import default_store, load_behavior
    from mailprobe.throttle import make_throttle

    store = store or default_store(settings)
    await asyncio.to_thread(load_behavior, store)
    own_throttle = throttle is None
    throttle = throttle or make_throttle(settings)
    try:
        # A shared throttle that cannot be reached stops the run now, with its reason,
        # rather than turning every address into a retried failure.
        await throttle.effective_limits("mailprobe.check")
        verifier = BulkVerifier(settings, store, throttle, sink=sink, options=options)
        return await verifier.run(lines)
    finally:
        if own_throttle:
            await throttle.aclose()
