"""A bulk run, start to finish: the loop that reads, routes, schedules and answers.

How a list flows:

1. Each input line becomes a `Target` (a bad line is answered at once: invalid_syntax).
   A stored answer younger than the reuse TTL answers a target without probing (`reader`).
2. Targets wait for their domain's MX (`routing`: through the cache, one lookup per
   domain), then queue at their MX host's lane. Domains without mail (NXDOMAIN, null MX)
   are answered from DNS.
3. The `scheduler` decides which lane gets the next session, within the throttle's
   caps; the conductor asks the throttle and starts the session (`session`). A
   session carries up to `rcpts_per_session` RCPTs, grouped by domain into
   transactions, with each new domain's catch-all check (`catchall`).
4. Every outcome goes through the retry table (`retry`): our batching refused (452
   4.5.3) is asked again alone and the MX remembered as one-RCPT-per-transaction;
   421 and rate limits penalise the MX's throttle; greylisting and other temporary
   failures are retried on their schedules; a timeout is retried once in a slow lane;
   an MX we cannot connect to hands its recipients to the next MX (`session`), and is
   tried last for a while (`routing`). Greylisting goes
   at the server's pace (`retry.greylist_wait`: the reply's hint, the MX's learned
   delay), and the retries of one MX due at about the same moment are routed together
   (`pacing`), so its lane batches them into sessions within the per-MX caps; an
   unknown delay is found by one scout while the MX's others wait behind it.
5. Every final answer is decided by `results.answer_for`, handed to the sink as a
   `LineAnswer` and stored in batches (`writer`).

The run is done when every line is answered (with --no-wait: when what is left only
waits for a retry timer or its domain's catch-all retry; those stay for --resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mailprobe.egress import Route
from mailprobe.engine.bulk import retry
from mailprobe.engine.bulk.catchall import CatchAllCheck, finding_for
from mailprobe.engine.bulk.errors import ServiceLost as ServiceLost
from mailprobe.engine.bulk.errors import SinkFailed as SinkFailed
from mailprobe.engine.bulk.options import MAX_UNSTORED_ROWS, BulkOptions, Sink, Summary
from mailprobe.engine.bulk.pacing import Pacer
from mailprobe.engine.bulk.reader import Duplicates, Lines, read
from mailprobe.engine.bulk.routing import Router
from mailprobe.engine.bulk.scheduler import Ask, Scheduler, Wait
from mailprobe.engine.bulk.session import SessionRunner
from mailprobe.engine.bulk.state import DomainState, MXLane
from mailprobe.engine.bulk.status import RunStatus, run_status
from mailprobe.engine.bulk.targets import Recipient, Target
from mailprobe.engine.bulk.writer import StoreAnswers, Writer
from mailprobe.engine.context import Context
from mailprobe.engine.egress import acquire_routed, pooled
from mailprobe.flags import flags_for
from mailprobe.inputs import InputLine
from mailprobe.results import Answer, LineAnswer, Outcome, answer_for, invalid_answer
from mailprobe.smtp import SMTPSession
from mailprobe.throttle import Slot, ThrottleError, ThrottleTimeout

log = logging.getLogger(__name__)


OUTAGE_MAX_PAUSE = 10.0  # seconds between tries of a throttle that went away


class BulkVerifier:
    """One run over one input. `await run(lines)`; answers go to `sink` as they are final."""

    def __init__(
        self,
        ctx: Context,
        *,
        sink: Sink,
        options: BulkOptions | None = None,
        port: int | None = None,
        store_answers: StoreAnswers | None = None,
        max_unstored: int = MAX_UNSTORED_ROWS,
    ) -> None:
        self.ctx = ctx
        self.sink = sink
        self.options = options or BulkOptions()
        self.port = port or ctx.settings.smtp_port
        self.summary = Summary()
        self.throttle = ctx.throttle
        self.routes = ctx.routes  # egress: each route has the per-MX caps (engine.egress)
        self.scheduler = Scheduler(self.options, pooled(self.throttle.policy, self.routes))
        self.writer = Writer(
            ctx, store_answers=store_answers, max_unstored=max_unstored, on_failure=self.stop
        )
        self.router = Router(self, ctx, self.options)
        self.sessions = SessionRunner(self, ctx, self.options, self.summary, self.port)
        self._slots = asyncio.Semaphore(self.options.max_in_flight)
        self._outstanding = 0  # lines counted in and not answered yet
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Future[Any]] = set()
        self.pacer = Pacer(ctx.behavior, self.options)  # retry timers, greylisting pace
        self._waiting: set[Target] = set()  # targets waiting in a retry timer
        self._parked: set[DomainState] = set()  # domains whose catch-all check waits to retry
        self._wake = asyncio.Event()
        self._stopping = False
        self._fatal: Exception | None = None  # why the run stopped early (see `stop`)
        self._outage_since: float | None = None  # when the shared throttle went away
        self._outage_pause = 0.0
        self.duplicates = Duplicates()  # lines asking a mailbox already asked (see reader)

    # -- the run ------------------------------------------------------------------

    async def run(self, lines: Lines) -> Summary:
        started = time.monotonic()
        writer = asyncio.create_task(self.writer.run())
        self._scheduler = asyncio.ensure_future(self._schedule())
        self.watch(self._scheduler, critical=True)
        reader = asyncio.create_task(read(lines, self, self.ctx, self.options))
        stopped = asyncio.create_task(self._done.wait())
        try:
            await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if self._fatal is None:
                await reader
                self.scheduler.reading = False
                self._check_done()
                await self._done.wait()
        finally:
            if self._fatal is None and not self.options.wait_for_retries:
                await self._answer_pending()
            self._stopping = True
            for waiting in (reader, stopped):
                waiting.cancel()
            await asyncio.gather(reader, stopped, return_exceptions=True)
            self.pacer.cancel()
            self.summary.pending = self.summary.pending or self._outstanding
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.writer.finish(writer)
            self.summary.elapsed = time.monotonic() - started
            self.summary.notes = self.routes.notes()
        if isinstance(self._fatal, ServiceLost):
            self._fatal.pending = self.summary.pending
        if self._fatal is not None:
            raise self._fatal
        return self.summary

    def status(self) -> RunStatus:
        """What the run waits for now (read-only, for a progress display)."""
        now = time.monotonic()
        return run_status(
            in_flight=self._outstanding, waiting=self._waiting, parked=self._parked,
            domains=self.router.domains.values(), lanes=self.router.lanes.values(),
            timers=self.pacer._timers, now=asyncio.get_running_loop().time(),
            throttle_down=None if self._outage_since is None else now - self._outage_since,
            reading=self.scheduler.reading,
        )  # fmt: skip

    # -- admission (see `reader.read`) --------------------------------------------------

    async def line_coming(self) -> None:
        if self.writer.full:
            await self.writer.room()
        await self._slots.acquire()
        self._outstanding += 1
        self.summary.total += 1

    async def answer_invalid(self, line: InputLine) -> None:
        await self._deliver(
            LineAnswer(line.line_no, line.raw, invalid_answer(line.raw, line.error, line.reason))
        )

    async def answer_copy(self, line: InputLine, answer: Answer) -> None:
        await self._deliver(LineAnswer(line.line_no, line.raw, answer))

    async def answer_reused(self, target: Target, answer: Answer) -> None:
        self.summary.reused += 1
        await self._deliver(LineAnswer(target.line_no, target.raw, answer))

    def admit(self, target: Target) -> None:
        self.domain(target.domain).pending += 1
        self.route(target)

    # -- routing (see `routing.Router`) ---------------------------------------------

    def domain(self, name: str) -> DomainState:
        return self.router.domain(name)

    def route(self, recipient: Recipient) -> None:
        recipient.in_session = False
        self.router.route(recipient)

    def look_up(self, lane: MXLane) -> None:
        self.router.look_up(lane)

    def kick(self, lane: MXLane) -> None:
        """The lane has work: let the scheduler look."""
        self.scheduler.kick(lane, time.monotonic())
        self._wake.set()

    # -- sessions: the scheduler decides, the conductor acts ---------------------------

    async def _schedule(self) -> None:
        """Start sessions while the scheduler says so; sleep when it says wait."""
        while not self._stopping:
            self._wake.clear()
            rnd = self.scheduler.plan(time.monotonic())
            decision = rnd.next()
            pause = 0.0
            while isinstance(decision, Ask):
                lane = decision.lane
                try:
                    # an RCPT token must be there, but the session takes its tokens as
                    # it sends (after connect and EHLO), so none arrives late
                    routed = await acquire_routed(
                        self.throttle, self.routes, lane.host, wait=0, rcpts=0,
                        priority=lane.critical,
                    )  # fmt: skip
                except ThrottleTimeout as exc:
                    rnd.refused(lane, exc.limited_by, exc.retry_after)
                except ThrottleError as exc:  # the shared throttle is down: never unthrottled
                    pause = self._throttle_down(exc)
                    break
                else:
                    self._throttle_back()
                    rnd.granted(lane)
                    self.spawn(self._session(lane, *routed) if routed else self._no_route(lane))
                decision = rnd.next()
            seconds = pause or (decision.seconds if isinstance(decision, Wait) else 0.0)
            if seconds > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), seconds)

    def _throttle_down(self, exc: ThrottleError) -> float:
        """The shared throttle cannot be reached: probing pauses (the recipients stay in
        their lanes, nothing is answered for them) and is tried again with backoff; after
        THROTTLE_OUTAGE_LIMIT seconds the run stops, leaving them for --resume."""
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since, self._outage_pause = now, 0.5
            log.warning("throttle unreachable, probing paused: %s", exc)
        elif now - self._outage_since >= self.ctx.settings.throttle_outage_limit:
            self.stop(
                ServiceLost(
                    f"the throttle stayed unreachable for {now - self._outage_since:.0f} s: {exc}"
                )
            )
            return 0.0
        else:
            self._outage_pause = min(2 * self._outage_pause, OUTAGE_MAX_PAUSE)
        return self._outage_pause

    def _throttle_back(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "throttle reachable again after %.0f s: probing resumes",
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None

    def stop(self, reason: Exception) -> None:
        """End the run now for a reason outside any address (`run` raises it): what is
        not answered yet stays pending, and nothing is invented for it."""
        if self._fatal is None:
            self._fatal = reason
        self._done.set()

    async def _no_route(self, lane: MXLane) -> None:
        """Every route of the lane's MX is resting: its recipients are answered proxy_error."""
        try:
            self.sessions.no_route(lane)
        finally:
            self.scheduler.ended(lane, 0.0)
            self._wake.set()

    async def _session(self, lane: MXLane, route: Route, slot: Slot | None) -> None:
        started = time.monotonic()
        lingering: SMTPSession | None = None
        try:
            lingering = await self.sessions.run(lane, route, slot)
        finally:
            self.scheduler.ended(lane, time.monotonic() - started)
            if lingering is not None and slot is not None:  # the server still counts it
                self.spawn(self._release_after(lingering, slot))
            else:
                await self._release(slot)

    async def _release_after(self, session: SMTPSession, slot: Slot) -> None:
        """A timed-out connection keeps its MX's concurrency slot until the server hangs up
        (at most a command timeout): a tarpit counts it until then, and a new connection
        meanwhile (the slow lane's second chance) would be one too many for it."""
        try:
            await session.linger(self.ctx.settings.smtp_command_timeout)
        finally:
            await self._release(slot)

    async def _release(self, slot: Slot | None) -> None:
        try:
            if slot is not None:  # --no-smtp takes none
                await self.throttle.release(slot)
        except ThrottleError as exc:  # a Redis lease frees the slot by itself anyway
            log.warning("could not release throttle slot for %s: %s", slot and slot.mx_host, exc)
        self._wake.set()

    # -- what to do with an outcome ---------------------------------------------------

    def answered(self, recipient: Recipient, outcome: Outcome) -> None:
        """Retry what deserves a retry (see `retry.next_step`); answer the rest."""
        recipient.in_session = False
        if isinstance(recipient, CatchAllCheck):
            self.checked(recipient, outcome.reason, outcome.message)
            return
        assert isinstance(recipient, Target)
        target = recipient
        target.attempts += 1
        target.last = outcome
        host = outcome.mx_host or ""
        self.ctx.behavior.record(
            host or target.domain,
            latency_ms=outcome.elapsed_ms,
            error_kind=outcome.error_kind,
            code=outcome.code,
            reason=outcome.reason,
        )
        waited, pace = self.pacer.greylisting(target, outcome.reason, outcome.message, host)
        counters = retry.Counters(
            target.greylists, target.temps, target.batching_retries, target.slow, waited
        )
        step = retry.next_step(outcome.reason, counters, self.options, pace)
        if isinstance(step, retry.Retry | retry.Final) and step.penalize and host:
            key = target.egress or host  # the route that earned it (egress_key)
            self.spawn(self.throttle.penalize(key, reason=outcome.reason))
        self.pacer.stepped(host, target, step)
        match step:
            case retry.Alone():
                target.batching_retries += 1
                target.alone = True
                target.attempts -= 1  # our batching, not the address, was refused
                self.route(target)
            case retry.Slow():
                target.slow = True
                self._retry(target, 0.0)
            case retry.Retry(delay=delay, counter="greylists"):
                target.greylists += 1
                self._retry(target, delay, host)
            case retry.Retry(delay=delay):
                target.temps += 1
                self._retry(target, delay, host)
            case retry.Behind():
                self._waiting.add(target)

                def again() -> None:
                    self._waiting.discard(target)
                    self.route(target)

                self.pacer.wait_behind(host, target, again)
                self._check_done()
            case retry.Final():
                self.finalize(target, target.last)

    def checked(self, check: CatchAllCheck, reason: str, message: str = "") -> None:
        """The catch-all check answered (see `retry.check_step`): retry it, or settle the
        domain and release the answers it held."""
        state = self.domain(check.domain)
        check.in_session = False
        backup, tracker = state.tracker_of(check)
        host = backup or state.lowest_mx or check.domain
        self.pacer.learn(check, finding_for(reason) is not None, host)
        waited, pace = self.pacer.greylisting(check, reason, message, host)
        step = retry.check_step(reason, check.greylists, self.options, waited=waited,
                                pace=pace, batching_retries=check.batching_retries)  # fmt: skip
        self.pacer.stepped(host, check, step)
        if isinstance(step, retry.Behind):
            check.alone = True
            self._parked.add(state)

            def again() -> None:
                self._parked.discard(state)
                self.route(check)

            self.pacer.wait_behind(host, check, again)
            self._check_done()
            return
        if isinstance(step, retry.Alone):  # our batching was refused: again now, alone
            check.batching_retries += 1
            check.alone = True
            self.route(check)
            return
        if isinstance(step, retry.Retry):
            check.greylists += 1
            check.alone = True  # its own transaction, in the session of its MX's retries
            self._retry_check(check, step.delay, host)
            self._parked.add(state)  # its held answers now wait for a retry too
            self._check_done()
            return
        found = step.catch_all
        if found is not None and backup is not None:
            # A backup's finding is its own: never the domain's (its primary may well know
            # its recipients), so it is not stored for the domain.
            self.ctx.behavior.mark_catch_all(backup, found)
        elif found is not None:
            if lowest := state.lowest_mx:
                self.ctx.behavior.mark_catch_all(lowest, found)
            self.writer.add_finding(state.name, found)  # stored, and retried, with the rows
        for target, outcome in tracker.settle(found):
            self.answered(target, outcome)

    def heard(self, recipient: Recipient, outcome: Outcome) -> None:
        """A RCPT's reply, as it comes (before any catch-all hold): a greylisted
        recipient let through teaches its MX's delay (`behavior.mark_greylist_passed`)."""
        code = outcome.code
        said = code is not None and not 400 <= code < 500  # a word on the address at last
        self.pacer.learn(recipient, said, outcome.mx_host)

    def finalize(self, recipient: Recipient, outcome: Outcome) -> None:
        if isinstance(recipient, CatchAllCheck):  # no input line: it only settles its domain
            self.checked(recipient, "connection_failed")
            return
        assert isinstance(recipient, Target)
        self._emit(recipient, outcome)

    def _retry(self, target: Target, delay: float, host: str = "") -> None:
        if self._stopping:
            return
        if delay <= 0:  # the slow lane's second chance: at once
            self.route(target)
            return
        self._waiting.add(target)

        def again() -> None:
            self._waiting.discard(target)
            self.route(target)

        self.pacer.later(delay, again, host or target.domain)
        self._check_done()

    def _retry_check(self, check: CatchAllCheck, delay: float, host: str) -> None:
        if self._stopping:
            return

        def again() -> None:
            self._parked.discard(self.domain(check.domain))
            self.route(check)

        self.pacer.later(delay, again, host)

    # -- answers --------------------------------------------------------------------

    def _emit(self, target: Target, outcome: Outcome) -> None:
        """The target's final answer: decided with its domain's catch-all finding and DNS
        status, stored (in a batch) and handed to the sink, at once (no task per answer:
        the sink is usually synchronous, see `_deliver_now`)."""
        state = self.router.known(target.domain)
        answer = answer_for(
            outcome,
            catch_all=state.tracker(outcome.mx_host).finding if state else None,
            dns_status=state.dns_status if state else None,
            flags=flags_for(target.address.local, target.address.ascii_domain),
            attempts=target.attempts,
        )
        if self.options.persist:
            self.writer.add(answer)
        if state is not None:
            state.pending -= 1
            self.router.forget_if_idle(state)
        self._deliver_now(LineAnswer(target.line_no, target.raw, answer))

    def _deliver_now(self, line: LineAnswer) -> None:
        """Hand a line's answer to the sink; a sink that returns an awaitable is awaited in
        a task of its own, and the line counts as answered once it is done."""
        maybe = self._to_sink(line)
        if maybe is not None:
            self.spawn(self._finish(line, maybe))
        else:
            self._answered_line(line)

    async def _deliver(self, line: LineAnswer) -> None:
        """`_deliver_now`, for callers that wait until the sink has the line."""
        maybe = self._to_sink(line)
        if maybe is not None:
            await self._finish(line, maybe)
        else:
            self._answered_line(line)

    def _to_sink(self, line: LineAnswer) -> Awaitable[Any] | None:
        verdicts = self.summary.by_verdict
        verdict = line.answer.verdict.value
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
        try:
            maybe = self.sink(line)
        except Exception as exc:  # the output is gone (closed pipe, full disk): stop the run
            self.stop(SinkFailed(exc))
            return None
        return maybe

    async def _finish(self, line: LineAnswer, maybe: Awaitable[Any]) -> None:
        try:
            await maybe
        except Exception as exc:
            self.stop(SinkFailed(exc))
        self._answered_line(line)

    def _answered_line(self, line: LineAnswer) -> None:
        self._outstanding -= 1
        self._slots.release()
        for line_no, raw in self.duplicates.done(line.line_no, line.answer):
            self._deliver_now(LineAnswer(line_no, raw, line.answer))  # its later copies
        self._check_done()

    async def _answer_pending(self) -> None:
        """--no-wait: every line still waiting for a retry (or for its domain's catch-all
        check) gets its record now, `unknown / pending_retry`, and no stored row, so
        `--resume` asks it again."""
        held = [t for s in self._parked for t in s.held_targets()]
        pending = [*self._waiting, *held]
        self.summary.pending = len(pending)
        self._waiting.clear()
        for target in sorted(pending, key=lambda t: t.line_no):
            last = target.last or Outcome(email=target.address.normalized, reason="", stage="retry")
            answer = answer_for(
                last.with_evidence(reason="pending_retry"),  # decide(): unknown, pending_retry
                flags=flags_for(target.address.local, target.address.ascii_domain),
                attempts=target.attempts,
            )
            await self._deliver(LineAnswer(target.line_no, target.raw, answer))

    def _check_done(self) -> None:
        if self.scheduler.reading:
            return
        # With --no-wait the run ends once every unanswered target only waits for a retry
        # (or for its domain's catch-all check): those stay pending for --resume.
        waiting = 0
        if not self.options.wait_for_retries:
            waiting = len(self._waiting) + sum(s.held for s in self._parked)
            if self.duplicates.waiting:  # and the later lines of the same mailboxes
                held = [t for s in self._parked for t in s.held_targets()]
                waiting += self.duplicates.copies_of(t.line_no for t in [*self._waiting, *held])
        if self._outstanding == waiting:
            self._done.set()

    # -- task supervision ---------------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def watch(self, task: asyncio.Future[Any], *, critical: bool = False) -> None:
        """Cancel `task` with the run. A critical task (the scheduler) that fails stops the
        run with its exception: without it nothing more would ever start."""
        self._tasks.add(task)
        if critical:
            task.add_done_callback(self._critical_done)
        else:
            task.add_done_callback(self._tasks.discard)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("bulk verifier task failed", exc_info=task.exception())

    def _critical_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None and not self._stopping:
            log.error("bulk verifier scheduler failed", exc_info=exc)
            self.stop(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))


async def verify(
    lines: Lines,
    sink: Sink,
    *,
    ctx: Context,
    options: BulkOptions | None = None,
    started: Callable[[BulkVerifier], None] | None = None,
) -> Summary:
    """Verify every line with the context's store, caches and throttle.

    A throttle the context was given is not closed here: the face owns the context
    (and calls `ctx.aclose()` when the context made its throttle itself). `started` gets
    the run's verifier, e.g. to show its `status()`."""
    await asyncio.to_thread(ctx.load_behavior)
    # A shared throttle that cannot be reached stops the run now, with its reason,
    # rather than turning every address into a retried failure.
    await ctx.throttle.effective_limits("mailprobe.check")
    verifier = BulkVerifier(ctx, sink=sink, options=options)
    if started is not None:
        started(verifier)
    return await verifier.run(lines)
