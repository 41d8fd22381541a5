"""The tables: addresses we generated, what DNS said of their domains, and every result.

verification_results is append-only: a re-probe adds a row, so the history of
an address (and the evidence for each verdict) is never overwritten. The view
latest_verification_results shows each address's newest row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class GeneratedEmail(Base):
    __tablename__ = "generated_emails"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # normalised: the dedup key
    local_part: Mapped[str] = mapped_column(String(64))
    domain: Mapped[str] = mapped_column(String(255), index=True)  # ASCII (IDNA)
    person_name: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32), default="new", index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DomainResolution(Base):
    __tablename__ = "domain_resolutions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(32))  # mailprobe.dns.ResolutionStatus
    mx_hosts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    lowest_mx: Mapped[str | None] = mapped_column(String(255))
    implicit_mx: Mapped[bool] = mapped_column(Boolean, default=False)
    flags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # free, disposable
    error: Mapped[str | None] = mapped_column(Text)
    ttl: Mapped[int] = mapped_column(Integer, default=0)
    resolved_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    mx_behavior: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the lowest MX's behaviour
    catch_all: Mapped[bool | None] = mapped_column(Boolean)
    catch_all_checked_at: Mapped[datetime | None] = mapped_column()


class MXHost(Base):
    """Per-MX behaviour, keyed by host because many domains share one MX."""

    __tablename__ = "mx_hosts"

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    behavior: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class VerificationResult(Base):
    __tablename__ = "verification_results"
    __table_args__ = (Index("ix_verification_results_email_latest", "email", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email_id: Mapped[int | None] = mapped_column(
        ForeignKey("generated_emails.id", ondelete="CASCADE")
    )
    email: Mapped[str] = mapped_column(String(320), index=True)
    category: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str | None] = mapped_column(String(16))
    verdict_reason: Mapped[str | None] = mapped_column(String(32))  # as shown with the verdict
    catch_all: Mapped[bool | None] = mapped_column(Boolean)  # the domain's finding, if known
    dns_status: Mapped[str | None] = mapped_column(String(32))  # what DNS said of the domain
    reason: Mapped[str] = mapped_column(String(32))
    code: Mapped[int | None] = mapped_column(Integer)
    enhanced_status: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    mx_host: Mapped[str | None] = mapped_column(String(255))
    stage: Mapped[str | None] = mapped_column(String(16))
    elapsed_ms: Mapped[int | None] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    error: Mapped[str | None] = mapped_column(Text)
    transcript: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


# -- the HTTP API's keys and bulk jobs (`mailprobe serve`) ---------------------


class ApiKey(Base):
    """An API key, kept as its SHA-256 only: the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))  # its first characters, to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class ApiJob(Base):
    """A bulk job of the HTTP API: its input lines are rows of api_job_lines, so a server
    restarted mid-job goes on from the lines not yet answered."""

    __tablename__ = "api_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued|running|done|cancelled
    name: Mapped[str | None] = mapped_column(String(255))  # the uploaded file's name
    key_id: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # by verdict
    columns: Mapped[list[str]] = mapped_column(JSON, default=list)  # the upload's header row
    address_column: Mapped[int | None] = mapped_column(Integer)  # its index in `columns`
    force: Mapped[bool] = mapped_column(Boolean, default=False)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str | None] = mapped_column(Text)
    webhook_each: Mapped[bool] = mapped_column(Boolean, default=False)
    webhook_state: Mapped[str | None] = mapped_column(String(16))  # pending|delivered|failed
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class ApiJobLine(Base):
    """One input line of a job and, once answered, its record."""

    __tablename__ = "api_job_lines"
    __table_args__ = (
        Index("ix_api_job_lines_job_line", "job_id", "line_no", unique=True),
        Index("ix_api_job_lines_job_verdict", "job_id", "verdict"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("api_jobs.id", ondelete="CASCADE"))
    line_no: Mapped[int] = mapped_column(Integer)
    raw: Mapped[str] = mapped_column(Text)
    dup_of: Mapped[int | None] = mapped_column(Integer)  # line_no of the same address's first line
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the row's other cells
    record: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    verdict: Mapped[str | None] = mapped_column(String(16))
    answered_at: Mapped[datetime | None] = mapped_column()
    # its per-address webhook event delivered or given up (None: not yet, or none asked)
    event_done: Mapped[bool | None] = mapped_column(Boolean)


class ApiWebhookDelivery(Base):
    """One attempt to deliver a job's webhook: shown on the job."""

    __tablename__ = "api_webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("api_jobs.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    ok: Mapped[bool] = mapped_column(Boolean, default=False)
    at: Mapped[datetime] = mapped_column(default=utcnow)
