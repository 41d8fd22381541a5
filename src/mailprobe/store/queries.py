"""The few reads and writes the rest of mailprobe makes; sessions come from Store.session()."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailprobe.address import EmailAddress
from mailprobe.flags import flags_for_email
from mailprobe.results import Answer, Outcome, answer_for
from mailprobe.store.database import SharedList
from mailprobe.store.models import (
    DomainResolution,
    GeneratedEmail,
    MXHost,
    VerificationResult,
    utcnow,
)
from mailprobe.verdict import Verdict

_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes kept by errors="surrogateescape"


def _insert(session: Session, table: Any) -> Any:
    """INSERT ... ON CONFLICT for the session's dialect (SQLite and PostgreSQL both have it)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"mailprobe supports SQLite and PostgreSQL, not {dialect}")


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def upsert_email(
    session: Session,
    address: EmailAddress,
    *,
    person_name: str | None = None,
    source: str | None = None,
) -> tuple[int, bool]:
    """Insert the address unless present; return (id, created). Safe against racing writers."""
    stmt = (
        _insert(session, GeneratedEmail)
        .values(
            email=address.normalized,
            local_part=address.local,
            domain=address.ascii_domain,
            person_name=person_name,
            source=source,
            status="new",
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(GeneratedEmail.id)
    )
    inserted = session.execute(stmt).scalar()  # None when the address was already there
    created = inserted is not None
    email_id = inserted or session.scalar(
        select(GeneratedEmail.id).where(GeneratedEmail.email == address.normalized)
    )
    assert email_id is not None
    if not created and (person_name or source):
        session.execute(
            update(GeneratedEmail)
            .where(GeneratedEmail.id == email_id)
            .values(
                person_name=person_name or GeneratedEmail.person_name,
                source=source or GeneratedEmail.source,
            )
        )
    return email_id, created


def claim_for_probe(session: Session, email_id: int) -> bool:
    """Mark an address queued unless it already is: the one gate against double enqueue."""
    result = session.execute(
        update(GeneratedEmail)
        .where(GeneratedEmail.id == email_id, GeneratedEmail.status.in_(("new", "failed")))
        .values(status="queued", updated_at=utcnow())
    )
    return _rowcount(result) == 1


def set_status(session: Session, email_ids: Iterable[int], status: str) -> None:
    session.execute(
        update(GeneratedEmail)
        .where(GeneratedEmail.id.in_(list(email_ids)))
        .values(status=status, updated_at=utcnow())
    )


def get_resolutions(session: Session, domains: list[str]) -> list[DomainResolution]:
    """Many domains' rows in one query (the bulk engine reads a batch at a time)."""
    if not domains:
        return []
    return list(
        session.scalars(select(DomainResolution).where(DomainResolution.domain.in_(domains)))
    )


def save_resolution(
    session: Session,
    domain: str,
    *,
    status: str,
    mx_hosts: list[dict[str, Any]],
    lowest_mx: str | None,
    implicit_mx: bool,
    ttl: int,
    error: str | None,
    flags: Mapping[str, Any],
    resolved_at: datetime,
    expires_at: datetime,
) -> None:
    """Write what DNS said, keeping what we learned about the domain (catch-all, behaviour)."""
    values = {
        "status": status,
        "mx_hosts": mx_hosts,
        "lowest_mx": lowest_mx,
        "implicit_mx": implicit_mx,
        "ttl": ttl,
        "error": error,
        "flags": dict(flags),
        "resolved_at": resolved_at,
        "expires_at": expires_at,
    }
    stmt = _insert(session, DomainResolution).values(domain=domain, **values)
    stmt = stmt.on_conflict_do_update(index_elements=["domain"], set_=values)
    session.execute(stmt)


def save_catch_all(session: Session, domain: str, catch_all: bool, when: datetime) -> None:
    session.execute(
        update(DomainResolution)
        .where(DomainResolution.domain == domain)
        .values(catch_all=catch_all, catch_all_checked_at=when)
    )


FINAL_VERDICTS = frozenset(v.value for v in (Verdict.DELIVERABLE, Verdict.UNDELIVERABLE,
                                             Verdict.RISKY))  # fmt: skip


def reusable_results(
    session: Session,
    emails: Iterable[str],
    final_after: datetime,
    unknown_after: datetime | None,
) -> dict[str, VerificationResult]:
    """Each address's stored result that may stand for a new probe: its newest final
    verdict (deliverable, undeliverable, risky) stored after `final_after`, else its
    newest `unknown` stored after `unknown_after` (None: an unknown is never reused).

    An unknown says why we could not tell (DNS failed, the server timed out or
    blocked us): it is worth remembering for minutes, not for a day. A final verdict
    beats a later unknown, which says nothing new about the mailbox."""
    wanted = list(emails)
    if not wanted:
        return {}
    oldest = final_after if unknown_after is None else min(final_after, unknown_after)
    rows = session.scalars(
        select(VerificationResult)
        .where(VerificationResult.email.in_(wanted), VerificationResult.created_at > oldest)
        .order_by(VerificationResult.id)
    )
    final: dict[str, VerificationResult] = {}
    unknown: dict[str, VerificationResult] = {}
    for row in rows:  # later ids overwrite earlier ones
        verdict = row.verdict or answer_from_row(row).verdict.value  # rows before 0002
        if verdict in FINAL_VERDICTS:
            if row.created_at > final_after:
                final[row.email] = row
        elif unknown_after is not None and row.created_at > unknown_after:
            unknown[row.email] = row
    return {**unknown, **final}


def _text(value: str | None, limit: int | None = None) -> str | None:
    """Text a database will take: no NUL (PostgreSQL refuses it in text), no lone surrogate
    (not encodable as UTF-8), and no longer than its column. What the server or the input
    sent is kept visible as escapes; the full text stays in the record."""
    if value is None:
        return None
    if value.isascii():  # the usual case: no surrogate can be in it
        if "\x00" in value:
            value = value.replace("\x00", "\\x00")
        return value if limit is None else value[:limit]
    if "\x00" in value or _SURROGATE.search(value):
        value = _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", value)
        value = value.replace("\x00", "\\x00")
    return value if limit is None else value[:limit]


class _Transcripts:
    """Transcripts made storable, the last one remembered: the answers of one session come
    one after the other with the same transcript, which is then made storable (and, by the
    engine's JSON serializer, encoded) once, and the rows share it."""

    def __init__(self) -> None:
        self._last: tuple[tuple[str, ...], SharedList] | None = None

    def __call__(self, transcript: tuple[str, ...]) -> SharedList:
        last = self._last
        if last is not None and (last[0] is transcript or last[0] == transcript):
            return last[1]
        storable = SharedList(_text(line) for line in transcript)
        self._last = (transcript, storable)
        return storable


def _row_values(
    answer: Answer, email_id: int | None, now: datetime, transcripts: _Transcripts | None = None
) -> dict[str, Any]:
    """The one rendering of an answer as a verification_results row (text made storable)."""
    o = answer.outcome
    return {
        "email_id": email_id,
        "email": _text(answer.email, 320),
        "category": o.category,
        "verdict": answer.verdict.value,
        "verdict_reason": _text(answer.reason, 32),
        "catch_all": answer.catch_all,
        "reason": _text(o.reason, 32),
        "code": o.code,
        "enhanced_status": _text(o.enhanced_status, 16),
        "message": _text(o.message),
        "mx_host": _text(o.mx_host, 255),
        "stage": _text(o.stage, 16),
        "elapsed_ms": o.elapsed_ms,
        "tls": o.tls,
        "attempts": answer.attempts,
        "error": _text(o.error),
        "transcript": (transcripts or _Transcripts())(o.transcript),
        "dns_status": _text(answer.dns_status, 32),
        "created_at": now,
    }


def add_answer(session: Session, answer: Answer, *, email_id: int | None = None) -> int:
    """Append one answer with its evidence; results are never updated in place."""
    row = VerificationResult(**_row_values(answer, email_id, utcnow()))
    session.add(row)
    session.flush()
    return row.id


def add_answers(session: Session, answers: Iterable[tuple[Answer, int | None]]) -> None:
    """Append many answers in one executemany (the bulk engine's batched writes): the Core
    INSERT compiled once per dialect, each value made a database value by its column
    type's own bind processor, and the rows handed to the driver's executemany
    (`exec_driver_sql`). `Connection.execute` with a list of dicts does the same, plus
    generic per-row work that was a tenth of a bulk run's CPU."""
    now, transcripts = utcnow(), _Transcripts()
    values = [_row_values(answer, email_id, now, transcripts) for answer, email_id in answers]
    if not values:
        return
    conn = session.connection()
    sql, names, processors, positional = _bulk_insert(conn.dialect, tuple(values[0]))
    rows: list[Any] = []
    for row in values:
        cells = [row[n] for n in names]
        for i, process in processors:
            if cells[i] is not None:
                cells[i] = process(cells[i])
        rows.append(tuple(cells) if positional else dict(zip(names, cells, strict=True)))
    conn.exec_driver_sql(sql, rows)


_BulkInsert = tuple[str, list[str], list[tuple[int, Any]], bool]
_BULK_INSERTS: dict[tuple[Any, tuple[str, ...]], _BulkInsert] = {}


def _bulk_insert(dialect: Any, columns: tuple[str, ...]) -> _BulkInsert:
    """The INSERT of a verification_results row for `dialect`: its SQL text, the column
    names in parameter order, the bind processors to apply by position, and whether the
    driver takes positional parameters (SQLite's qmark) or named ones (psycopg)."""
    cached = _BULK_INSERTS.get((dialect, columns))
    if cached is None:
        table = cast(Table, VerificationResult.__table__)
        names = list(columns)
        compiled = insert(table).compile(dialect=dialect, column_keys=names)
        positional = bool(compiled.positional)
        if positional:
            names = list(compiled.positiontup or ())
        processors = [
            (i, proc)
            for i, name in enumerate(names)
            if (proc := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            is not None
        ]
        cached = (str(compiled), names, processors, positional)
        _BULK_INSERTS[dialect, columns] = cached
    return cached


def answer_from_row(row: VerificationResult) -> Answer:
    """The one reading of a stored row as an answer, whichever face wrote it."""
    outcome = Outcome(
        email=row.email,
        reason=row.reason,
        stage=row.stage or "rcpt",
        category=row.category,
        mx_host=row.mx_host,
        code=row.code,
        message=row.message or "",
        enhanced_status=row.enhanced_status,
        error=row.error,
        tls=bool(row.tls),
        elapsed_ms=row.elapsed_ms or 0,
        transcript=tuple(row.transcript or ()),
    )
    if row.verdict is None or row.verdict_reason is None:
        # Written before schema 0002 (or by a probe that stored no verdict): decide again.
        catch_all = row.catch_all
        if catch_all is None and row.verdict == "risky" and row.reason == "accepted":
            catch_all = True
        answer = answer_for(outcome, catch_all=catch_all, dns_status=row.dns_status)
    else:
        answer = Answer(
            email=row.email,
            verdict=Verdict(row.verdict),
            reason=row.verdict_reason,
            outcome=outcome,
            catch_all=row.catch_all,
            dns_status=row.dns_status,
        )
    return replace(
        answer,
        flags=flags_for_email(row.email),
        attempts=row.attempts,
        reused=True,
        stored_at=row.created_at,
    )


def latest_results(
    session: Session,
    *,
    domain: str | None = None,
    since: datetime | None = None,
    emails: Iterable[str] | None = None,
) -> Iterator[VerificationResult]:
    """Each address's newest stored result, by address: all of them, or those of one
    domain, stored since `since`, or among `emails` (`mailprobe results`). Streamed."""
    newest = select(func.max(VerificationResult.id)).group_by(VerificationResult.email)
    if domain is not None:
        newest = newest.where(
            func.lower(VerificationResult.email).endswith("@" + domain.lower(), autoescape=True)
        )
    if since is not None:
        newest = newest.where(VerificationResult.created_at >= since)
    if emails is not None:
        newest = newest.where(VerificationResult.email.in_(list(emails)))
    stmt = (
        select(VerificationResult)
        .where(VerificationResult.id.in_(newest))
        .order_by(VerificationResult.email)
        .execution_options(yield_per=500)
    )
    yield from session.scalars(stmt)


def latest_result(session: Session, email: str) -> VerificationResult | None:
    return session.scalar(
        select(VerificationResult)
        .where(VerificationResult.email == email)
        .order_by(VerificationResult.id.desc())
        .limit(1)
    )


def save_mx_behavior(session: Session, snapshots: Mapping[str, Mapping[str, Any]]) -> None:
    """Upsert per-MX behaviour; mirror it into domain_resolutions.mx_behavior (the seed view)."""

    now = utcnow()
    for host, data in snapshots.items():
        stmt = _insert(session, MXHost).values(host=host, behavior=dict(data), updated_at=now)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["host"], set_={"behavior": dict(data), "updated_at": now}
            )
        )
        session.execute(
            update(DomainResolution)
            .where(DomainResolution.lowest_mx == host)
            .values(mx_behavior=dict(data))
        )


def load_mx_behavior(session: Session, hosts: Iterable[str] | None = None) -> dict[str, Any]:

    stmt = select(MXHost.host, MXHost.behavior)
    if hosts is not None:
        stmt = stmt.where(MXHost.host.in_(list(hosts)))
    return {host: behavior for host, behavior in session.execute(stmt)}


def stored_domains(session: Session) -> list[str]:
    """Every distinct domain of the stored addresses."""
    stmt = select(GeneratedEmail.domain).distinct().order_by(GeneratedEmail.domain)
    return list(session.scalars(stmt))


def queued_emails(session: Session, limit: int | None = None) -> list[tuple[int, str]]:
    """Addresses left "queued" (embedded mode: the database is the queue)."""
    stmt = select(GeneratedEmail.id, GeneratedEmail.email).where(GeneratedEmail.status == "queued")
    return [(i, e) for i, e in session.execute(stmt.order_by(GeneratedEmail.id).limit(limit))]
