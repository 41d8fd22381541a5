"""Queue jobs: the seed's `task_probe_email` on queue `verify`, and the one enqueue seam.

With REDIS_URL set, `enqueue_probe_email` puts a job on RQ's `verify` queue
with an id derived from the address, so one address is never queued twice at
once. Without Redis (the embedded default) the database is the queue: the
address stays "queued" until `run_queued()` (e.g. `mailprobe ingest --probe`)
probes it in this process. Jobs are thin wrappers over the async engine.
"""

from __future__ import annotations

import hashlib
from typing import Any

from mailprobe.address import InvalidAddress, parse_address
from mailprobe.config import get_settings
from mailprobe.smtp import run_sync

VERIFY_QUEUE = "verify"
MX_QUEUE = "mx"


def probe_job_id(email: str) -> str:
    return "probe-" + hashlib.sha256(email.lower().encode()).hexdigest()[:32]


def enqueue_probe_email(email_id: int, email: str, domain: str) -> str:
    """Queue one probe; return the job id. The only way probes get queued."""
    settings = get_settings()
    if settings.redis_url is None:
        return f"local-{email_id}"  # the row's "queued" status is the job
    from redis import Redis
    from rq import Queue
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    connection = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
    job_id = probe_job_id(email)
    try:
        existing = Job.fetch(job_id, connection=connection)
        if existing.get_status(refresh=False) in {"queued", "started", "deferred", "scheduled"}:
            return job_id
    except NoSuchJobError:
        pass
    Queue(VERIFY_QUEUE, connection=connection).enqueue(
        task_probe_email, email_id, email, domain, job_id=job_id, result_ttl=86400
    )
    return job_id


def task_probe_email(
    email_id: int | None, email: str, domain: str | None = None, force: bool = False
) -> dict[str, Any]:
    """The seed's job: resolve the MX (cache unless `force`), probe, store, return the result.

    A bad address returns {"ok": False, "error": "bad_input: ..."} rather than raising,
    so the job is not retried forever.
    """
    from mailprobe.engine import probe_email

    try:
        address = parse_address(email)
    except (InvalidAddress, TypeError) as exc:
        return _bad_input(email, f"bad_input: {exc}")
    if domain and domain.strip().lower() not in {address.domain, address.ascii_domain}:
        return _bad_input(email, f"bad_input: domain {domain!r} does not match {email!r}")
    return run_sync(probe_email(address.normalized, force_resolve=force, email_id=email_id))


def _bad_input(email: str, error: str) -> dict[str, Any]:
    return {
        "ok": False,
        "category": "unknown",
        "code": None,
        "message": "",
        "mx_host": None,
        "helo_domain": get_settings().smtp_helo_domain,
        "elapsed_ms": 0,
        "error": error,
        "email": email,
        "reason": "invalid_syntax",
        "error_kind": "bad_input",
    }


def run_queued(limit: int | None = None) -> list[dict[str, Any]]:
    """Embedded mode: probe every address left "queued" in the database, in this process."""
    from sqlalchemy import select

    from mailprobe.engine import default_store, probe_many
    from mailprobe.store.models import GeneratedEmail

    store = default_store()
    with store.session() as session:
        stmt = select(GeneratedEmail.id, GeneratedEmail.email).where(
            GeneratedEmail.status == "queued"
        )
        rows = [(i, e) for i, e in session.execute(stmt.limit(limit))]
    return run_sync(probe_many(rows, store=store))
