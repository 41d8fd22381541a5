"""A pipelined session's plan, as typed steps: what is sent, and what each reply is for.

With PIPELINING (RFC 2920) the whole session is one group: every transaction (MAIL,
its RCPTs, RSET), each new domain's catch-all check right after its first
transaction, and QUIT. The replies come back in order; the session runner pairs each
with its step and dispatches on the step's type (`match`), so what a reply means is
written once, next to the step that asked for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailprobe.engine.bulk.catchall import CatchAll, CatchAllCheck
from mailprobe.engine.bulk.targets import Recipient
from mailprobe.smtp import SMTPSession


@dataclass(frozen=True, slots=True)
class MailStep:
    txn: int  # the transaction's index in the session


@dataclass(frozen=True, slots=True)
class RcptStep:
    txn: int
    recipient: Recipient


@dataclass(frozen=True, slots=True)
class RsetStep:
    txn: int  # ends the transaction: its accepted answers go (or wait for the check)


@dataclass(frozen=True, slots=True)
class CheckMailStep:
    """The catch-all check's MAIL FROM (its own transaction)."""


@dataclass(frozen=True, slots=True)
class CatchAllStep:
    check: CatchAllCheck


@dataclass(frozen=True, slots=True)
class CheckRsetStep:
    """Ends the check's transaction."""


@dataclass(frozen=True, slots=True)
class QuitStep:
    pass


Step = MailStep | RcptStep | RsetStep | CheckMailStep | CatchAllStep | CheckRsetStep | QuitStep


def command(step: Step, session: SMTPSession, mail_from: str) -> tuple[str, tuple[bytes, ...]]:
    """The step's (stage, command words) for `SMTPSession.pipeline`."""
    match step:
        case MailStep() | CheckMailStep():
            return "mail", session.mail_command(mail_from)
        case RcptStep(recipient=r):
            return "rcpt", session.rcpt_command(r.address)
        case CatchAllStep(check=p):
            return "rcpt", session.rcpt_command(p.address)
        case RsetStep() | CheckRsetStep():
            return "rset", (b"RSET",)
        case QuitStep():
            return "quit", (b"QUIT",)


def plan_session(
    txns: list[list[Recipient]], tracker: Callable[[str], CatchAll], catch_all_check: bool
) -> list[Step]:
    """The steps of a session carrying `txns`: each transaction, a catch-all check after
    the first transaction of each domain whose tracker at this MX needs one (the check
    starts here), QUIT."""
    plan: list[Step] = []
    for t, txn in enumerate(txns):
        plan += [MailStep(t), *(RcptStep(t, r) for r in txn), RsetStep(t)]
        catch_all = tracker(txn[0].domain)
        if catch_all.needs_check(catch_all_check):
            check = catch_all.start(txn[0].domain)
            plan += [CheckMailStep(), CatchAllStep(check), CheckRsetStep()]
    plan.append(QuitStep())
    return plan
