"""One SMTP session at one MX lane: open, run the transactions, hand every reply on.

A session takes up to `rcpts_per_session` recipients from its lane (one domain's
first), opens one connection and groups them by domain into transactions (MAIL
FROM, RCPT..., RSET). After a domain's first transaction comes its catch-all check,
when one is needed (see `catchall`). Without PIPELINING each command waits for its
reply; with it the whole session, QUIT included, is one RFC 2920 group, planned as
a list of typed steps (see `steps`) whose replies are read in order and dispatched
by type.

Every reply becomes an `Outcome` handed to the engine (`answered`); accepted RCPTs
go through the catch-all tracker of the MX that answered first (the domain's own at
its primary MX hosts, a backup's own elsewhere). A broken session puts the recipients
it never asked back in line (a few times), and an MX we cannot connect to (refused,
reset, no answer to our SYN) hands them, and whatever waits at it, to the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections import deque

from mailprobe.classify import Reason
from mailprobe.dns import DNSLookupError
from mailprobe.egress import DIRECT_ROUTE, Route, egress_key
from mailprobe.engine.bulk.catchall import Accepted, CatchAll
from mailprobe.engine.bulk.egress import answer_no_route, proxy_failed
from mailprobe.engine.bulk.options import BulkOptions, Summary
from mailprobe.engine.bulk.outcomes import (
    Span,
    failure,
    from_reply,
    internal_error,
    reason_of,
    refusals_in,
    smtputf8_unsupported,
)
from mailprobe.engine.bulk.reports import Deferred, Engine
from mailprobe.engine.bulk.state import MXLane, drain, take
from mailprobe.engine.bulk.steps import (
    CatchAllStep,
    CheckMailStep,
    CheckRsetStep,
    MailStep,
    QuitStep,
    RcptStep,
    RsetStep,
    command,
    plan_session,
)
from mailprobe.engine.bulk.targets import Recipient, Target
from mailprobe.engine.bulk.tokens import TOKEN_WAIT_MAX, OutOfTokens, Tokens, group_end, rcpts_from
from mailprobe.engine.context import Context
from mailprobe.engine.probe import probe_options
from mailprobe.smtp import (
    ErrorKind,
    Reply,
    SessionError,
    SMTPSession,
    StageRefused,
    Timeouts,
    effective_timeouts,
    skipped,
)
from mailprobe.throttle import Slot

log = logging.getLogger(__name__)


class SessionRunner:
    """Runs sessions for the engine; one runner serves every lane of a run."""

    def __init__(
        self, engine: Engine, ctx: Context, options: BulkOptions, summary: Summary, port: int
    ) -> None:
        self.engine = engine
        self.ctx = ctx
        self.options = options
        self.summary = summary
        self.port = port

    async def run(
        self, lane: MXLane, route: Route = DIRECT_ROUTE, slot: Slot | None = None
    ) -> SMTPSession | None:
        """One session: the lane's next recipients, start to finish, through `route`,
        within the throttle's slot (one connection) and its RCPT tokens. Returns a session
        that timed out on a server still holding the connection: the caller lingers on it
        (`linger`) before it gives the slot back, since the server still counts it."""
        batch = take(lane.recipients, self.options.rcpts_per_session)
        if not batch:
            return None
        for r in batch:
            r.in_session = True
            r.egress = egress_key(route, lane.host)  # a penalty goes to this route
        try:
            if route.skip or slot is None:  # --no-smtp: DNS and the lists have said all
                for r in batch:
                    self.engine.answered(r, skipped(r.address.normalized, lane.host))
                return None
            wait = min(TOKEN_WAIT_MAX, self.ctx.settings.throttle_wait)
            return await self._run(
                lane, batch, route, Tokens(self.ctx.throttle, slot, wait, lambda: lane.critical)
            )
        except Exception as exc:  # a bug, or a reply nobody foresaw: never lose an address
            log.error("session with %s failed", lane.host, exc_info=exc)
            detail = f"internal error in the session with {lane.host}: {type(exc).__name__}: {exc}"
            for r in batch:
                if r.in_session:
                    self.engine.answered(r, internal_error(r, lane.host, detail))
            return None

    def no_route(self, lane: MXLane) -> None:
        answer_no_route(self.engine, self.ctx.routes, lane, self.options.rcpts_per_session)

    async def _run(
        self, lane: MXLane, batch: list[Recipient], route: Route, tokens: Tokens
    ) -> SMTPSession | None:
        if lane.ips is None:
            self.engine.look_up(lane)
        assert lane.ips is not None
        try:
            ips = await asyncio.shield(lane.ips)
        except DNSLookupError as exc:
            lane.ips = None  # looked up again by the next session
            for r in batch:
                self.engine.answered(r, failure(r, lane.host, "dns_error", str(exc)))
            return None
        if not ips:
            lane.ips = None
            for r in batch:
                r.tried += (lane.host,)
                self.engine.route(r)
            return None
        settings = self.ctx.settings
        options = probe_options(
            settings, port=self.port, behavior_hint=self.ctx.behavior.hint(lane.host)
        )
        timeouts = effective_timeouts(
            options["connect_timeout"], options["command_timeout"], options["behavior_hint"]
        )
        deadline_per_rcpt = options["deadline"]
        if lane.slow:
            connect, command_timeout, deadline_per_rcpt = self.options.slow_timeouts
            timeouts = Timeouts(connect, command_timeout)
        session = SMTPSession(
            mx_host=lane.host,
            helo_domain=options["helo_domain"],
            port=self.port,
            connect_to=ips[0],
            connect_timeout=timeouts.connect,
            command_timeout=timeouts.command,
            source_address=route.source_address or options["source_address"],
            starttls=options["starttls"],
            tls_context=options["tls_context"],
            proxy=route.proxy,
        )
        self.summary.sessions += 1
        timed_out = False  # the server stopped answering in time: linger, then let go
        pending = deque(batch)
        deferred: Deferred | None = None
        try:
            async with asyncio.timeout(
                deadline_per_rcpt + timeouts.command * len(batch)
            ) as tokens.deadline:
                try:
                    await session.open()
                except StageRefused as refused:
                    self.ctx.behavior.mark_alive(lane.host)  # it answered, if only to refuse
                    for r in drain(pending):
                        self.engine.answered(r, from_reply(r, session, refused.reply, 0))
                    return None
                self.ctx.behavior.mark_alive(lane.host)
                self.ctx.routes.worked(route)
                header = len(session.transcript)
                mail_from = options["mail_from"]
                self._without_smtputf8(session, pending)
                if not pending:
                    return None
                if (
                    session.pipelining
                    and settings.smtp_pipelining
                    and not lane.no_pipelining
                    and not self.ctx.behavior.no_pipelining(lane.host)
                ):
                    await self._grouped(lane, session, pending, header, mail_from, tokens)
                else:
                    # One command at a time: the answers wait for QUIT's proof of step.
                    deferred = Deferred(self.engine)
                    runner = copy.copy(self)
                    runner.engine = deferred
                    await runner._one_by_one(lane, session, pending, header, mail_from, tokens)
        except OutOfTokens as exc:  # polite to the end: what was not sent waits its turn
            log.debug("session with %s ends early: %s", lane.host, exc)
            for r in drain(pending):
                self.engine.route(r)
        except SessionError as exc:
            timed_out = exc.kind.value == "timeout"
            if exc.kind is ErrorKind.PROXY:
                proxy_failed(self.engine, self.ctx.routes, lane, route, drain(pending), str(exc))
            else:
                self._failed(lane, session, pending, exc.kind.value, str(exc))
        except TimeoutError:
            timed_out = True
            error = f"timeout at {session.stage}: session deadline"
            self._failed(lane, session, pending, "timeout", error)
        finally:
            if not timed_out:
                await session.close()
            if deferred is not None:
                self._settle_deferred(lane, session, deferred)
        return session if timed_out else None

    def _settle_deferred(self, lane: MXLane, session: SMTPSession, deferred: Deferred) -> None:
        """A one-command-at-a-time session ended: in step, its answers count; out of step
        (QUIT or a later reply showed the stream shifted), none of them do."""
        if not session.out_of_step:
            deferred.deliver()
            return
        suspect = [r for r, _ in deferred.answers]
        for check, _, _ in deferred.checks:
            state = self.engine.domain(check.domain)
            suspect += [target for target, _ in state.tracker_of(check)[1].abandon()]
        deferred.answers, deferred.checks = [], []
        self._out_of_step(lane, session, suspect, "replies out of step (seen at the end)")

    def _next_transaction(self, lane: MXLane, pending: deque[Recipient]) -> list[Recipient]:
        """The next transaction's recipients: one domain, up to rcpts_per_transaction (one
        for an MX that refuses more, or for a recipient that must be asked alone)."""
        domain = pending[0].domain
        size = 1 if lane.one_rcpt or pending[0].alone else self.options.rcpts_per_transaction
        txn = [pending.popleft()]
        while pending and len(txn) < size and pending[0].domain == domain and not pending[0].alone:
            txn.append(pending.popleft())
        return txn

    # -- without PIPELINING: each command waits for its reply -----------------------

    async def _one_by_one(
        self,
        lane: MXLane,
        session: SMTPSession,
        pending: deque[Recipient],
        header: int,
        mail_from: str,
        tokens: Tokens,
    ) -> None:
        while pending:
            domain = pending[0].domain
            txn = self._next_transaction(lane, pending)
            try:
                got = await tokens.take(self._within_refusals(session, header, len(txn)))
            except OutOfTokens:
                pending.extendleft(reversed(txn))
                raise
            pending.extendleft(reversed(txn[got:]))  # fewer tokens: a smaller transaction
            txn = txn[:got]
            span = (header, len(session.transcript))
            accepted = await self._transaction(lane, session, txn, pending, span, mail_from)
            if accepted is None:
                continue  # MAIL refused: every RCPT got that answer, no catch-all check
            # The catch-all check runs with the domain's first transaction, accepted or not,
            # so that a greylisting server's clock runs for the check and the real RCPTs at once.
            tracker = self.engine.domain(domain).tracker(lane.host)
            await self._settle(session, domain, tracker, accepted, mail_from, tokens)

    async def _transaction(
        self,
        lane: MXLane,
        session: SMTPSession,
        txn: list[Recipient],
        pending: deque[Recipient],
        span: Span,
        mail_from: str,
    ) -> list[Accepted] | None:
        """MAIL, each RCPT, RSET; the accepted answers (None when MAIL was refused)."""
        accepted: list[Accepted] = []
        answered = 0
        try:
            try:
                await session.mail(mail_from)
            except StageRefused as refused:
                for r in txn:
                    self.engine.answered(r, from_reply(r, session, refused.reply, 0, span))
                answered = len(txn)
                await session.rset()
                return None
            for r in txn:
                sent = time.monotonic()
                reply = await session.rcpt(r.address)
                answered += 1
                self._rcpt_answered(lane, session, r, reply, sent, span, accepted)
            await session.rset()
        except SessionError:  # nothing is lost: unanswered recipients go back first in line
            self._ask_again(accepted)
            pending.extendleft(reversed(txn[answered:]))
            raise
        return accepted

    async def _settle(
        self,
        session: SMTPSession,
        domain: str,
        tracker: CatchAll,
        accepted: list[Accepted],
        mail_from: str,
        tokens: Tokens,
    ) -> None:
        """The domain's catch-all check at this MX, in a transaction of its own after the
        real RCPTs, when it has no finding and no check under way; accepted answers wait."""
        if not tracker.needs_check(self.options.catch_all_check):
            self._release(tracker, accepted)  # known, or a check under way releases them
            return
        tracker.held.extend(accepted)
        check = tracker.start(domain)
        try:
            await tokens.take(1)
        except OutOfTokens:  # the check goes in line like a retried one; the answers wait
            check.alone = True
            self.engine.route(check)
            raise
        try:
            await session.mail(mail_from)
            reply = await session.rcpt(check.address)
            await session.rset()
        except StageRefused as refused:
            reply = refused.reply
        except SessionError:
            self.engine.checked(check, Reason.CONNECTION_FAILED)
            raise
        self.engine.checked(check, reason_of(session, reply), reply.message)

    # -- with PIPELINING: the whole session is one group ------------------------------

    async def _grouped(
        self,
        lane: MXLane,
        session: SMTPSession,
        pending: deque[Recipient],
        header: int,
        mail_from: str,
        tokens: Tokens,
    ) -> None:
        """The session as RFC 2920 groups: replies are read in order and paired with the
        plan, so a group costs one round trip, not one per command. Each group carries as
        many RCPTs as the throttle has tokens for now (all of them, when the caps are far
        off); QUIT goes with the last."""
        txns: list[list[Recipient]] = []
        while pending:
            txns.append(self._next_transaction(lane, pending))
        plan = plan_session(
            txns,
            lambda name: self.engine.domain(name).tracker(lane.host),
            self.options.catch_all_check,
        )
        span = (header, len(session.transcript))
        refused: dict[int, Reply | None] = {}  # per transaction: its MAIL's refusal
        check_refused: Reply | None = None  # the check's MAIL, read just before its RCPT
        accepted: dict[int, list[Accepted]] = {}
        asked: set[int] = set()  # ids of recipients that got their answer
        read = 0
        try:
            while read < len(plan):
                want = self._within_refusals(session, header, rcpts_from(plan, read))
                end = group_end(plan, read, await tokens.take(want))
                group = [command(step, session, mail_from) for step in plan[read:end]]
                sent = time.monotonic()
                async with contextlib.aclosing(session.pipeline(group)) as replies:
                    async for reply in replies:
                        step = plan[read]
                        read += 1
                        match step:
                            case MailStep(txn=t):
                                refused[t] = None if reply.ok else reply
                            case CheckMailStep():
                                check_refused = None if reply.ok else reply
                            case RcptStep(txn=t, recipient=r):
                                asked.add(id(r))
                                refusal = refused.get(t)
                                if refusal is not None:  # "503 need MAIL": the refusal answers
                                    outcome = from_reply(r, session, refusal, 0, span)
                                    self.engine.answered(r, outcome)
                                else:
                                    got = accepted.setdefault(t, [])
                                    self._rcpt_answered(lane, session, r, reply, sent, span, got)
                            case RsetStep(txn=t):
                                state = self.engine.domain(txns[t][0].domain)
                                self._release(state.tracker(lane.host), accepted.pop(t, []))
                            case CatchAllStep(check=check):
                                asked.add(id(check))
                                said = check_refused or reply
                                self.engine.checked(check, reason_of(session, said), said.message)
                            case CheckRsetStep() | QuitStep():
                                pass
        except OutOfTokens:
            # Ended early, in step: what was answered stands; the rest waits its turn.
            for t, got in accepted.items():
                self._release(self.engine.domain(txns[t][0].domain).tracker(lane.host), got)
            for step in plan[read:]:
                if isinstance(step, CatchAllStep):
                    step.check.alone = True  # still under way: asked in a later session
                    pending.append(step.check)
                elif isinstance(step, RcptStep):
                    pending.append(step.recipient)
            raise
        except SessionError:
            for got in accepted.values():
                self._ask_again(got)
            for step in plan:
                if isinstance(step, CatchAllStep) and id(step.check) not in asked:
                    # never answered: the next session checks again
                    state = self.engine.domain(step.check.domain)
                    self._ask_again(state.tracker_of(step.check)[1].abandon())
            unanswered = [r for txn in txns for r in txn if id(r) not in asked]
            pending.extendleft(reversed(unanswered))  # the first was being asked
            if unanswered or read < len(plan) - 1:
                raise
            # only QUIT's reply went missing: every answer is in

    def _within_refusals(self, session: SMTPSession, header: int, want: int) -> int:
        """How many of the `want` RCPTs the session may still send: Postfix counts every
        refused command of a session (RCPTs included) and, from smtpd_soft_error_limit
        (10) on, holds every reply back smtpd_error_sleep_time (1 s); at
        smtpd_hard_error_limit (20) it hangs up with "421 4.7.0 Error: too many errors"
        (postconf(5); smtpd.c, smtpd_chat.c). So no group carries more RCPTs than the
        session can still see refused (SMTP_SESSION_MAX_REFUSALS), and a session whose
        refusals are spent ends (OutOfTokens): the rest go to a new one.
        (testing.smtpd: MXBehavior.soft_error_limit.)"""
        budget = self.ctx.settings.smtp_session_max_refusals
        if not budget or not want:
            return want
        refusals = refusals_in(session.transcript[header:])
        if refusals >= budget:
            raise OutOfTokens(f"{refusals} refusals: the rest in another session")
        return min(want, budget - refusals)

    # -- replies and failures ------------------------------------------------------------

    def _without_smtputf8(self, session: SMTPSession, pending: deque[Recipient]) -> None:
        """RFC 6531 §3.4: a non-ASCII local part goes only to a server that offers
        SMTPUTF8 (and then in a transaction whose MAIL carries the SMTPUTF8 parameter,
        see SMTPSession.mail_command). Elsewhere it is answered smtputf8_unsupported
        without a RCPT: a strict server would refuse it (Postfix: "553 5.6.7 Must declare
        SMTPUTF8 to send unicode address"), a lax one might answer for a mangled name."""
        if session.smtputf8 or not any(r.address.needs_smtputf8 for r in pending):
            return
        kept = [r for r in pending if not r.address.needs_smtputf8]
        for r in pending:
            if r.address.needs_smtputf8:
                self.engine.answered(r, smtputf8_unsupported(r, session))
        pending.clear()
        pending.extend(kept)

    def _rcpt_answered(
        self,
        lane: MXLane,
        session: SMTPSession,
        recipient: Recipient,
        reply: Reply,
        sent: float,
        span: Span,
        accepted: list[Accepted],
    ) -> None:
        self.summary.rcpts += 1
        elapsed = int((time.monotonic() - sent) * 1000)
        outcome = from_reply(recipient, session, reply, elapsed, span)
        self.engine.heard(recipient, outcome)
        if outcome.reason == Reason.ACCEPTED and isinstance(recipient, Target):
            accepted.append((recipient, outcome))  # waits for the catch-all check
        else:
            self.engine.answered(recipient, outcome)
        if outcome.reason == Reason.TOO_MANY_RECIPIENTS and not lane.one_rcpt:
            lane.one_rcpt = True
            self.ctx.behavior.mark_one_rcpt(lane.host)  # later runs (and workers) know it

    def _release(self, tracker: CatchAll, accepted: list[Accepted]) -> None:
        """A transaction's accepted answers: held for a check under way, or answered."""
        for target, outcome in tracker.hold(accepted, self.options.catch_all_check):
            self.engine.answered(target, outcome)

    def _ask_again(self, accepted: list[Accepted]) -> None:
        """The session broke before the catch-all check could give these accepted RCPTs
        their meaning: ask them again in a new session (a few times, then answer with
        what we have: accepted, catch-all unknown)."""
        for target, outcome in accepted:
            target.bounces += 1
            if target.bounces <= 2:
                self.engine.route(target)
            else:
                self.engine.answered(target, outcome)

    def _failed(
        self, lane: MXLane, session: SMTPSession, pending: deque[Recipient], kind: str, error: str
    ) -> None:
        recipients = drain(pending)
        if kind == "out_of_step":
            self._out_of_step(lane, session, recipients, error)
            return
        if session.stage == "connect" and kind in {"connection_failed", "timeout"}:
            self._hand_over(lane, session, recipients, kind, error)
            return
        if session.stage in {"rcpt", "rset", "mail"}:
            # At RCPT the first recipient was being asked when the session broke; the
            # others (all of them, at MAIL or RSET) never were: they go back to the lane
            # for a new session (a few times, then as failures).
            asked = 1 if session.stage == "rcpt" else 0
            for r in recipients[asked:]:
                r.bounces += 1
                if r.bounces <= 2:
                    self.engine.route(r)
                else:
                    self.engine.answered(r, failure(r, lane.host, kind, error, session.stage))
            recipients = recipients[:asked]
        for r in recipients:
            outcome = failure(r, lane.host, kind, error, session.stage).with_evidence(
                transcript=tuple(session.transcript), tls=session.tls
            )
            self.engine.answered(r, outcome)

    def _out_of_step(
        self, lane: MXLane, session: SMTPSession, recipients: list[Recipient], error: str
    ) -> None:
        """The replies no longer matched the commands (a stray reply, one missing, a group
        answered in another order): nothing the session said about an address is used.
        Each is asked again on a fresh connection, one command at a time; out of step a
        second time, it is answered unknown / protocol_error and the MX is remembered as
        not to be pipelined (the behaviour cache, like one-RCPT-per-transaction)."""
        lane.no_pipelining = True
        for r in recipients:
            r.out_of_step += 1
            if r.out_of_step <= 1:
                self.engine.route(r)
                continue
            self.ctx.behavior.mark_no_pipelining(lane.host)
            outcome = failure(r, lane.host, "out_of_step", error, session.stage)
            self.engine.answered(
                r, outcome.with_evidence(transcript=tuple(session.transcript), tls=session.tls)
            )

    def _hand_over(
        self, lane: MXLane, session: SMTPSession, recipients: list[Recipient], kind: str, error: str
    ) -> None:
        """No connection (refused, reset, unreachable, no SYN-ACK in time): the next MX
        takes over (RFC 5321 §5.1; see `probe.unreachable` for Postfix's rule). The host
        is remembered dead, so what waits at it goes to the next MX at once; the slow
        lane is for servers that connect and then answer slowly."""
        self.ctx.behavior.mark_dead(lane.host)
        for r in recipients:
            r.last = failure(r, lane.host, kind, error, session.stage).with_evidence(
                transcript=tuple(session.transcript), tls=session.tls
            )
            r.tried += (lane.host,)
            self.engine.route(r)
        for r in drain(lane.recipients):  # queued here, not tried here: routed afresh
            self.engine.route(r)
