"""What the engine produces, as types: one conversation's `Outcome`, an address's `Answer`.

An `Outcome` is what one SMTP conversation (or the lack of one) told us about one
address: the reply we came for, or why there was none. An `Answer` is the
address's final word for the user: a verdict, the reason shown with it, and the
evidence (the outcome, the domain's catch-all finding, DNS status, flags).

`answer_for` is the one place a verdict is decided, whichever face asked
(`mailprobe probe`, a queue job, bulk verify), so a stored row reads back the
same whoever wrote it. Renderers live at the edges: the seed's dict here
(`Outcome.as_seed_dict`, used by `probe_rcpt` and `task_probe_email` only),
CLI records in `mailprobe.report`, rows in `mailprobe.store.queries`.

Pure: no sockets, no database.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from mailprobe.classify import Category, Reason, category_for_code, classify_error, classify_reply
from mailprobe.flags import Flags
from mailprobe.verdict import Verdict, decide

MAX_MESSAGE_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Outcome:
    """One conversation's result for one address: a reply read, or why none was."""

    email: str
    reason: str  # a classify.Reason value, or a DNS status when there was nothing to dial
    stage: str  # input | dns | connect | greeting | ehlo | starttls | mail | rcpt | ...
    category: str = Category.UNKNOWN.value  # the seed's accept|hard_fail|temp_fail|unknown
    mx_host: str | None = None
    helo_domain: str | None = None
    code: int | None = None
    message: str = ""
    enhanced_status: str | None = None
    rule: str | None = None  # the classify rule that named the reason
    error: str | None = None  # why there was no reply
    error_kind: str | None = None  # smtp.ErrorKind value, "dns", "dns_error" or "bad_input"
    tls: bool = False
    elapsed_ms: int = 0
    port: int | None = None
    transcript: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The seed's `ok`: a reply was read (False on every exception)."""
        return self.code is not None

    @classmethod
    def from_reply(
        cls,
        email: str,
        *,
        stage: str,
        code: int,
        message: str,
        mx_host: str,
        enhanced_status: str | None = None,
        **evidence: Any,
    ) -> Outcome:
        """A reply read at `stage`: the seed's category by code, our reason by rule."""
        named = classify_reply(stage, code, message, mx_host=mx_host, recipient=email)
        return cls(
            email=email,
            reason=named.reason.value,
            stage=stage,
            category=category_for_code(code).value,
            mx_host=mx_host,
            code=code,
            message=message[:MAX_MESSAGE_CHARS],
            enhanced_status=enhanced_status,
            rule=named.rule,
            **evidence,
        )

    @classmethod
    def failure(
        cls, email: str, *, kind: str, error: str, stage: str = "connect", **evidence: Any
    ) -> Outcome:
        """No reply to read: timeout, refused connection, TLS failure, DNS trouble."""
        reason = "dns_error" if kind == "dns_error" else classify_error(kind).value
        return cls(
            email=email, reason=reason, stage=stage, error=error, error_kind=kind, **evidence
        )

    @classmethod
    def bad_input(
        cls, email: str, error: str, reason: str = Reason.INVALID_SYNTAX.value, **evidence: Any
    ) -> Outcome:
        """Nothing was sent: the address (or an identity) is not one we may put on the wire
        (invalid_syntax), or its domain is special-use (reserved_domain)."""
        return cls(
            email=email,
            reason=reason,
            stage="input",
            error=error,
            error_kind="bad_input",
            **evidence,
        )

    @classmethod
    def no_mail_host(
        cls, email: str, dns_status: str, error: str | None = None, **evidence: Any
    ) -> Outcome:
        """The domain has nothing to dial (NXDOMAIN, null MX, DNS failure): DNS is the reason."""
        return cls(
            email=email,
            reason=dns_status,
            stage="dns",
            error=error or f"no MX to probe: {dns_status}",
            error_kind="dns",
            **evidence,
        )

    def with_evidence(self, **changes: Any) -> Outcome:
        return replace(self, **changes)

    def as_seed_dict(self) -> dict[str, Any]:
        """The seed's result dict (its eight keys first), plus the evidence we keep."""
        return {
            "ok": self.ok,
            "category": self.category,
            "code": self.code,
            "message": self.message,
            "mx_host": self.mx_host,
            "helo_domain": self.helo_domain,
            "elapsed_ms": self.elapsed_ms,
            "error": self.error,
            "email": self.email,
            "port": self.port,
            "stage": self.stage,
            "enhanced_status": self.enhanced_status,
            "reason": self.reason,
            "rule": self.rule,
            "error_kind": self.error_kind,
            "tls": self.tls,
            "transcript": list(self.transcript),
        }


@dataclass(frozen=True, slots=True)
class Answer:
    """An address's final answer: what the user should do, and the evidence for it."""

    email: str
    verdict: Verdict
    reason: str  # shown with the verdict (catch_all, null_mx, mailbox_not_found...)
    outcome: Outcome
    catch_all: bool | None = None  # the domain's finding, when one was made
    dns_status: str | None = None
    flags: Flags | None = None  # None for a string that is no address
    attempts: int = 1
    reused: bool = False  # read back from the store rather than probed in this run
    stored_at: datetime | None = None

    @property
    def elapsed_ms(self) -> int:
        return self.outcome.elapsed_ms

    @property
    def mx_host(self) -> str | None:
        return self.outcome.mx_host

    @property
    def code(self) -> int | None:
        return self.outcome.code

    @property
    def transient(self) -> bool:
        """Worth asking again later: the domain's or the MX host's DNS lookup failed."""
        return self.dns_status == "dns_error" or self.outcome.reason == "dns_error"

    def as_seed_dict(self) -> dict[str, Any]:
        """The seed's dict for the probe behind this answer, with the verdict alongside."""
        return {
            **self.outcome.as_seed_dict(),
            "dns_status": self.dns_status,
            "flags": self.flags.as_dict() if self.flags else {},
            "verdict": self.verdict.value,
            "verdict_reason": self.reason,
            "catch_all": self.catch_all,
        }


def answer_for(
    outcome: Outcome,
    *,
    catch_all: bool | None = None,
    dns_status: str | None = None,
    flags: Flags | None = None,
    attempts: int = 1,
) -> Answer:
    """The one place a verdict is decided (see `mailprobe.verdict.decide`)."""
    verdict, shown = decide(outcome.reason, catch_all=catch_all, dns_status=dns_status)
    return Answer(
        email=outcome.email,
        verdict=verdict,
        reason=shown,
        outcome=outcome,
        catch_all=catch_all,
        dns_status=dns_status,
        flags=flags,
        attempts=attempts,
    )


def invalid_answer(
    raw: str, error: str | None, reason: str = Reason.INVALID_SYNTAX.value
) -> Answer:
    """A line that is no address (or one at a special-use domain): undeliverable, and
    nothing was sent."""
    return answer_for(Outcome.bad_input(raw, error or "invalid address", reason), attempts=0)


@dataclass(frozen=True, slots=True)
class LineAnswer:
    """An input line's answer, as bulk verify hands it to its sink."""

    line_no: int
    raw: str  # the line as given
    answer: Answer
