"""What one reply (or its absence) in a bulk session tells about one recipient: the
`Outcome` builders of `session`, with the transcript each carries."""

from __future__ import annotations

from mailprobe.classify import Reason, classify_reply
from mailprobe.engine.bulk.targets import Recipient
from mailprobe.results import Outcome
from mailprobe.smtp import Reply, SMTPSession

Span = tuple[int, int]  # the transcript's header (up to EHLO) and where this exchange began


def reason_of(session: SMTPSession, reply: Reply) -> str:
    return classify_reply(reply.stage, reply.code, reply.message, mx_host=session.mx_host).reason


def from_reply(
    recipient: Recipient,
    session: SMTPSession,
    reply: Reply,
    elapsed_ms: int,
    span: Span | None = None,
) -> Outcome:
    """The outcome of a reply: the transcript is the session's header and this exchange."""
    return Outcome.from_reply(
        recipient.address.normalized,
        stage=reply.stage,
        code=reply.code,
        message=reply.message,
        mx_host=session.mx_host,
        enhanced_status=reply.enhanced,
        helo_domain=session.helo_domain,
        elapsed_ms=elapsed_ms,
        tls=session.tls,
        transcript=_transcript(session, span),
    )


# (the session's transcript list itself, its length, the span) -> the tuple made of it; the
# list is held, so its identity cannot pass to another session's list while it is here.
_last_transcript: list[tuple[list[str], int, Span | None, tuple[str, ...]]] = []


def _transcript(session: SMTPSession, span: Span | None) -> tuple[str, ...]:
    """The session's header and this exchange, as one tuple shared by every reply of a
    pipelined group (they are read before any is handed on, so they see the same lines):
    built once per group, not once per RCPT, and stored once (`store.queries`)."""
    lines = session.transcript
    if _last_transcript:
        held, length, held_span, made = _last_transcript[0]
        if held is lines and length == len(lines) and held_span == span:
            return made
    made = tuple(lines if span is None else lines[: span[0]] + lines[span[1] :])
    _last_transcript[:] = [(lines, len(lines), span, made)]
    return made


def smtputf8_unsupported(recipient: Recipient, session: SMTPSession) -> Outcome:
    """The same outcome `smtp.probe_address` gives: nothing asked, the server cannot."""
    return Outcome(
        email=recipient.address.normalized,
        reason=Reason.SMTPUTF8_UNSUPPORTED.value,
        stage="ehlo",
        mx_host=session.mx_host,
        helo_domain=session.helo_domain,
        error="address needs SMTPUTF8 and the server does not offer it",
        tls=session.tls,
        transcript=tuple(session.transcript),
    )


def internal_error(recipient: Recipient, mx_host: str, detail: str) -> Outcome:
    """What a session that failed on our side tells about an address: nothing."""
    return Outcome(
        email=recipient.address.normalized, reason=Reason.INTERNAL_ERROR.value, stage="session",
        mx_host=mx_host, error=detail, error_kind="internal",
    )  # fmt: skip


def failure(
    recipient: Recipient, mx_host: str, kind: str, error: str, stage: str = "connect"
) -> Outcome:
    return Outcome.failure(
        recipient.address.normalized, kind=kind, error=error, stage=stage, mx_host=mx_host
    )


def refusals_in(transcript: list[str]) -> int:
    """The refusals (4xx and 5xx replies) in a stretch of a session's transcript: each
    reply's last line is logged as "S: <code> <text>" (its others as "S: <code>-...")."""
    return sum(1 for line in transcript if line[:4] in ("S: 4", "S: 5") and line[6:7] == " ")
