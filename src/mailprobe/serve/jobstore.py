"""Bulk jobs as rows: created with every input line, answered line by line, read back.

Everything a job is lives here (api_jobs, api_job_lines, api_webhook_deliveries), so
a restarted server knows which lines are still to ask and asks only those. These are
blocking calls: the API runs them in a thread.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from mailprobe.store import Store
from mailprobe.store.models import ApiJob, ApiJobLine, ApiWebhookDelivery, utcnow

INSERT_CHUNK = 1000
ACTIVE = ("queued", "running")
FINISHED = ("done", "cancelled", "failed")


@dataclass(frozen=True, slots=True)
class NewLine:
    """An input line as the job keeps it: `key` is its normalised address (None: no
    address), which finds the duplicates probed once."""

    line_no: int
    raw: str
    key: str | None
    extra: dict[str, str]


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: str | None = None
    each: bool = False  # an event per address too


@dataclass(frozen=True, slots=True)
class Delivery:
    event: str
    attempt: int
    status_code: int | None
    error: str | None
    ok: bool
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "attempt": self.attempt,
            "status_code": self.status_code,
            "error": self.error,
            "ok": self.ok,
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class JobView:
    id: str
    status: str
    name: str | None
    total: int
    done: int
    counts: dict[str, int]
    columns: list[str]
    address_column: int | None
    force: bool
    webhook: Webhook | None
    webhook_state: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    key_id: int | None
    deliveries: list[Delivery] = field(default_factory=list)


def create_job(
    store: Store,
    lines: Iterable[NewLine],
    *,
    name: str | None = None,
    columns: list[str] | None = None,
    address_column: int | None = None,
    key_id: int | None = None,
    force: bool = False,
    webhook: Webhook | None = None,
) -> JobView:
    """Store a job and all its lines in one transaction: it exists whole, or not at all."""
    job_id = uuid.uuid4().hex
    first: dict[str, int] = {}
    with store.session() as session:
        session.add(
            ApiJob(
                id=job_id, status="queued", name=name, key_id=key_id, total=0, done=0,
                counts={}, columns=columns or [], address_column=address_column, force=force,
                webhook_url=webhook.url if webhook else None,
                webhook_secret=webhook.secret if webhook else None,
                webhook_each=bool(webhook and webhook.each),
                webhook_state="pending" if webhook else None,
            )
        )  # fmt: skip
        session.flush()
        total = 0
        chunk: list[dict[str, Any]] = []
        for line in lines:
            total += 1
            dup_of = None
            if line.key is not None:
                dup_of = first.setdefault(line.key, line.line_no)
                dup_of = None if dup_of == line.line_no else dup_of
            chunk.append(
                {"job_id": job_id, "line_no": line.line_no, "raw": line.raw, "dup_of": dup_of,
                 "extra": line.extra}
            )  # fmt: skip
            if len(chunk) >= INSERT_CHUNK:
                session.execute(insert(ApiJobLine), chunk)
                chunk = []
        if chunk:
            session.execute(insert(ApiJobLine), chunk)
        session.execute(update(ApiJob).where(ApiJob.id == job_id).values(total=total))
    found = get_job(store, job_id)
    assert found is not None
    return found


def get_job(store: Store, job_id: str, *, deliveries: int = 0) -> JobView | None:
    with store.session() as session:
        row = session.get(ApiJob, job_id)
        if row is None:
            return None
        shown: list[Delivery] = []
        if deliveries:
            rows = session.scalars(
                select(ApiWebhookDelivery)
                .where(ApiWebhookDelivery.job_id == job_id)
                .order_by(ApiWebhookDelivery.id.desc())
                .limit(deliveries)
            )
            shown = [_delivery(d) for d in rows][::-1]
        return _view(row, shown)


def list_jobs(store: Store, limit: int = 50, key_id: int | None = None) -> list[JobView]:
    with store.session() as session:
        query = select(ApiJob).order_by(ApiJob.created_at.desc()).limit(limit)
        if key_id is not None:
            query = query.where(ApiJob.key_id == key_id)
        return [_view(r, []) for r in session.scalars(query)]


def active_jobs(store: Store) -> list[str]:
    """Jobs to run, oldest first: queued ones and those a stopped server left running."""
    with store.session() as session:
        return list(
            session.scalars(
                select(ApiJob.id).where(ApiJob.status.in_(ACTIVE)).order_by(ApiJob.created_at)
            )
        )


def jobs_by_state(store: Store) -> dict[str, int]:
    with store.session() as session:
        rows = session.execute(select(ApiJob.status, func.count()).group_by(ApiJob.status))
        return {status: int(count) for status, count in rows}


def set_status(store: Store, job_id: str, status: str, *, error: str | None = None) -> bool:
    """Move a job on; a finished job stays finished (a cancel racing the end loses)."""
    values: dict[str, Any] = {"status": status}
    if status == "running":
        values["started_at"] = utcnow()
    if status in FINISHED:
        values["finished_at"] = utcnow()
    if error is not None:
        values["error"] = error
    with store.session() as session:
        result = session.execute(
            update(ApiJob)
            .where(ApiJob.id == job_id, ApiJob.status.not_in(FINISHED))
            .values(**values)
        )
        return bool(getattr(result, "rowcount", 0))


def unanswered(store: Store, job_id: str) -> list[tuple[int, str, dict[str, str]]]:
    """The lines still to ask (a duplicate waits for its first line instead)."""
    with store.session() as session:
        rows = session.execute(
            select(ApiJobLine.line_no, ApiJobLine.raw, ApiJobLine.extra)
            .where(
                ApiJobLine.job_id == job_id,
                ApiJobLine.record.is_(None),
                ApiJobLine.dup_of.is_(None),
            )
            .order_by(ApiJobLine.line_no)
        )
        return [(n, raw, extra or {}) for n, raw, extra in rows]


def save_records(
    store: Store, job_id: str, records: list[dict[str, Any]]
) -> list[tuple[int, dict[str, Any]]]:
    """Store answered lines' records, and the same record for each line that repeats their
    address; count them on the job. Returns every (line_no, record) stored."""
    if not records:
        return []
    now = utcnow()
    stored: list[tuple[int, dict[str, Any]]] = []
    with store.session() as session:
        by_line = {int(r["line"]): r for r in records}
        dups = session.execute(
            select(ApiJobLine.line_no, ApiJobLine.raw, ApiJobLine.dup_of).where(
                ApiJobLine.job_id == job_id,
                ApiJobLine.dup_of.in_(list(by_line)),
                ApiJobLine.record.is_(None),
            )
        )
        for line_no, raw, dup_of in dups:
            assert dup_of is not None
            stored.append((line_no, {**by_line[dup_of], "line": line_no, "email": raw,
                                     "duplicate_of": dup_of}))  # fmt: skip
        stored.extend(by_line.items())
        for line_no, record in stored:
            session.execute(
                update(ApiJobLine)
                .where(
                    ApiJobLine.job_id == job_id,
                    ApiJobLine.line_no == line_no,
                    ApiJobLine.record.is_(None),
                )
                .values(record=record, verdict=record["verdict"], answered_at=now)
            )
        job = session.get(ApiJob, job_id, with_for_update=True)
        if job is not None:
            counts = Counter(job.counts or {})
            counts.update(r["verdict"] for _, r in stored)
            job.counts = dict(counts)
            job.done = (job.done or 0) + len(stored)
    return stored


def results(
    store: Store,
    job_id: str,
    *,
    verdicts: Iterable[str] = (),
    page: int = 1000,
) -> Iterator[list[tuple[str, dict[str, Any], dict[str, Any]]]]:
    """The answered lines so far, in line order, a page at a time: (raw, extra, record)."""
    wanted = list(verdicts)
    after = 0
    while True:
        with store.session() as session:
            query = (
                select(ApiJobLine.line_no, ApiJobLine.raw, ApiJobLine.extra, ApiJobLine.record)
                .where(
                    ApiJobLine.job_id == job_id,
                    ApiJobLine.record.is_not(None),
                    ApiJobLine.line_no > after,
                )
                .order_by(ApiJobLine.line_no)
                .limit(page)
            )
            if wanted:
                query = query.where(ApiJobLine.verdict.in_(wanted))
            rows = list(session.execute(query))
        if not rows:
            return
        after = rows[-1][0]
        yield [(raw, extra or {}, record) for _, raw, extra, record in rows]


def delete_job(store: Store, job_id: str) -> None:
    with store.session() as session:
        session.execute(delete(ApiJob).where(ApiJob.id == job_id))


# -- webhook deliveries -----------------------------------------------------------


def add_delivery(
    store: Store,
    job_id: str,
    event: str,
    attempt: int,
    *,
    status_code: int | None,
    error: str | None,
    ok: bool,
) -> None:
    with store.session() as session:
        session.add(
            ApiWebhookDelivery(
                job_id=job_id, event=event, attempt=attempt, status_code=status_code,
                error=error, ok=ok, at=utcnow(),
            )
        )  # fmt: skip


def set_webhook_state(store: Store, job_id: str, state: str) -> None:
    with store.session() as session:
        session.execute(update(ApiJob).where(ApiJob.id == job_id).values(webhook_state=state))


def pending_webhooks(store: Store) -> list[tuple[str, int]]:
    """Finished jobs whose completion webhook is not delivered yet, with the attempts made."""
    with store.session() as session:
        ids = list(
            session.scalars(
                select(ApiJob.id).where(
                    ApiJob.status.in_(FINISHED), ApiJob.webhook_state == "pending"
                )
            )
        )
        out = []
        for job_id in ids:
            made = session.scalar(
                select(func.count())
                .select_from(ApiWebhookDelivery)
                .where(
                    ApiWebhookDelivery.job_id == job_id, ApiWebhookDelivery.event == "job.finished"
                )
            )
            out.append((job_id, int(made or 0)))
        return out


def pending_events(store: Store) -> list[tuple[str, list[dict[str, Any]]]]:
    """Per-address events a stopped server did not finish: per job that asked for them, the
    records of its answered lines whose event is not done."""
    with store.session() as session:
        rows = session.execute(
            select(ApiJobLine.job_id, ApiJobLine.record)
            .join(ApiJob, ApiJob.id == ApiJobLine.job_id)
            .where(
                ApiJob.webhook_each.is_(True),
                ApiJobLine.record.is_not(None),
                ApiJobLine.event_done.is_(None),
            )
            .order_by(ApiJobLine.job_id, ApiJobLine.line_no)
        )
        out: dict[str, list[dict[str, Any]]] = {}
        for job_id, record in rows:
            out.setdefault(job_id, []).append(record)
        return list(out.items())


def mark_event_done(store: Store, job_id: str, line_no: int) -> None:
    """The line's per-address event was delivered, or given up after its attempts."""
    with store.session() as session:
        session.execute(
            update(ApiJobLine)
            .where(ApiJobLine.job_id == job_id, ApiJobLine.line_no == line_no)
            .values(event_done=True)
        )


def _delivery(row: ApiWebhookDelivery) -> Delivery:
    return Delivery(row.event, row.attempt, row.status_code, row.error, row.ok, row.at)


def _view(row: ApiJob, deliveries: list[Delivery]) -> JobView:
    webhook = (
        Webhook(row.webhook_url, row.webhook_secret, row.webhook_each) if row.webhook_url else None
    )
    return JobView(
        id=row.id, status=row.status, name=row.name, total=row.total, done=row.done,
        counts=dict(row.counts or {}), columns=list(row.columns or []),
        address_column=row.address_column, force=row.force, webhook=webhook,
        webhook_state=row.webhook_state, error=row.error, created_at=row.created_at,
        started_at=row.started_at, finished_at=row.finished_at, key_id=row.key_id,
        deliveries=deliveries,
    )  # fmt: skip
