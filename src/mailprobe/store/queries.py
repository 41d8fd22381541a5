"""The few reads and writes the rest of mailprobe makes; sessions come from Store.session()."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailprobe.address import EmailAddress
from mailprobe.store.models import (
    DomainResolution,
    GeneratedEmail,
    MXHost,
    VerificationResult,
    utcnow,
)


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


def latest_results(
    session: Session, emails: Iterable[str], newer_than: datetime
) -> dict[str, VerificationResult]:
    """The newest stored result of each address, if newer than `newer_than` (for reuse)."""
    wanted = list(emails)
    if not wanted:
        return {}
    rows = session.scalars(
        select(VerificationResult)
        .where(VerificationResult.email.in_(wanted), VerificationResult.created_at > newer_than)
        .order_by(VerificationResult.id)
    )
    return {row.email: row for row in rows}  # later ids overwrite earlier ones


def add_result(
    session: Session, result: Mapping[str, Any], *, email_id: int | None, verdict: str | None
) -> int:
    """Append one probe result with its evidence; results are never updated in place."""
    row = VerificationResult(
        email_id=email_id,
        email=result["email"],
        category=result["category"],
        verdict=verdict,
        verdict_reason=result.get("verdict_reason"),
        catch_all=result.get("catch_all"),
        reason=result["reason"],
        code=result.get("code"),
        enhanced_status=result.get("enhanced_status"),
        message=result.get("message"),
        mx_host=result.get("mx_host"),
        stage=result.get("stage"),
        elapsed_ms=result.get("elapsed_ms"),
        tls=bool(result.get("tls")),
        attempts=int(result.get("attempts", 1)),
        error=result.get("error"),
        transcript=list(result.get("transcript", [])),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row.id


def add_results(session: Session, rows: Iterable[tuple[Mapping[str, Any], str | None]]) -> None:
    """Append many results in one INSERT (the bulk engine's batched writes)."""
    now = utcnow()
    values = [
        {
            "email_id": None,
            "email": r["email"],
            "category": r["category"],
            "verdict": verdict,
            "verdict_reason": r.get("verdict_reason"),
            "catch_all": r.get("catch_all"),
            "reason": r["reason"],
            "code": r.get("code"),
            "enhanced_status": r.get("enhanced_status"),
            "message": r.get("message"),
            "mx_host": r.get("mx_host"),
            "stage": r.get("stage"),
            "elapsed_ms": r.get("elapsed_ms"),
            "tls": bool(r.get("tls")),
            "attempts": int(r.get("attempts", 1)),
            "error": r.get("error"),
            "transcript": list(r.get("transcript", [])),
            "created_at": now,
        }
        for r, verdict in rows
    ]
    if values:
        session.execute(insert(VerificationResult), values)


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
