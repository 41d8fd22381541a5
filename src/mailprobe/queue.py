"""Queue jobs (R06/R16): probes on queue `verify`, MX lookups (`task_resolve_mx`) on `mx`.

`task_probe_email` is the seed's task (returns the result dict); RQ runs it through
`job_probe_email`, which adds the retry policy below.

Two modes, one seam (`enqueue_probe_email`):

* Embedded (no REDIS_URL): the database is the queue. An address stays
  "queued" until `run_queued()` (e.g. `mailprobe ingest --probe`) probes it in
  this process.
* Fleet (REDIS_URL set): jobs go on RQ queues and `run_worker` serves them, on
  as many machines as you like. Every probe runs inside a throttle slot for the
  domain's lowest MX taken from the *Redis* throttle, so the global and per-MX
  caps (concurrency and rate) hold across the whole fleet.

What happens when things go wrong (all of it visible in RQ, nothing dropped):

* No throttle slot within THROTTLE_WAIT: the job *returns* an RQ `Retry`, which
  RQ 3 turns into a re-schedule after a growing, jittered delay (RESCHEDULE_*);
  this has its own budget, so waiting for a busy MX never uses up the retries
  meant for failures. Delayed jobs need the RQ scheduler: `run_worker` always
  starts workers with it (a `--burst` worker only moves jobs already due, so it
  can exit leaving re-scheduled jobs for a later run).
* Transient failures (Redis for the throttle unreachable, a DNS failure that
  may pass) raise, and RQ's `Retry(max=RETRY_MAX, interval=RETRY_INTERVALS)`
  given at enqueue re-runs the job with backoff. Once retries are exhausted the
  job lands in RQ's FailedJobRegistry with the exception as the reason.
* Permanent problems (no "@", domain mismatch) are returned as a result dict
  with error "bad_input: ...": they would fail the same way every time.
* A worker killed with SIGKILL mid-job: RQ's parent process heart-beats every
  running job (`ProbeWorker`: every JOB_HEARTBEAT s, expiring HEARTBEAT_GRACE s
  later instead of RQ's fixed minute). When the heartbeats stop, the job's
  entry in StartedJobRegistry expires, and the next registry maintenance of
  any live worker (every MAINTENANCE_INTERVAL s, also while idle) treats it as
  abandoned: it is re-queued through the job's `Retry` (or failed with
  AbandonedJobError when none is left). The dead job's throttle slot is a
  Redis lease of `slot_lease()` seconds that the live job keeps renewing, so it
  frees itself soon after the kill. (A retry *delay* waits for a scheduler: if
  the dead worker held RQ's scheduler lock, another worker takes it over once
  the lock's minute-long TTL has run out.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import random
import sys
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from mailprobe.address import InvalidAddress, parse_address
from mailprobe.config import ConfigError, Settings, get_settings
from mailprobe.redact import redact_url as redact_url  # re-exported: callers import it from here
from mailprobe.smtp import run_sync
from mailprobe.throttle import (
    RedisThrottle,
    Slot,
    Throttle,
    ThrottleError,
    ThrottleTimeout,
    make_throttle,
    penalty_reason,
)

if TYPE_CHECKING:
    from redis import Redis
    from rq import Retry, Worker
    from rq.job import Job

    from mailprobe.store import Store

log = logging.getLogger(__name__)

VERIFY_QUEUE = "verify"
MX_QUEUE = "mx"
QUEUES = (MX_QUEUE, VERIFY_QUEUE)

# Failures worth another try (RQ Retry, given at enqueue): seconds before each retry.
RETRY_MAX = 3
RETRY_INTERVALS: tuple[int, ...] = (5, 30, 120)
# No throttle slot in time: re-schedule, growing delays (jittered up to +50%).
RESCHEDULE_MAX = 50
RESCHEDULE_INTERVALS: tuple[int, ...] = (2, 5, 10, 30, 60)
RESULT_TTL = 86400  # seconds RQ keeps a finished job's result
FAILURE_TTL = 7 * 86400  # ...and a failed job, in FailedJobRegistry
# Worker liveness: a job whose worker stops heart-beating is re-run.
JOB_HEARTBEAT = 5  # seconds between heartbeats of a running job
HEARTBEAT_GRACE = 10  # a job is abandoned this long after its last heartbeat was due
MAINTENANCE_INTERVAL = 30  # seconds between registry sweeps (abandoned jobs, expired entries)
# Throttle slot lease for queue jobs: renewed while the probe runs, so it can be short.
SLOT_LEASE_MIN = 2.0
SLOT_LEASE_MAX = 15.0
# Talking to Redis from enqueue: an unreachable Redis is an error within seconds.
REDIS_CONNECT_TIMEOUT = 3.0
REDIS_SOCKET_TIMEOUT = 5.0
_LIVE_STATUSES = frozenset({"queued", "started", "deferred", "scheduled"})


class QueueUnavailable(RuntimeError):
    """The job queue (Redis) cannot be reached: the caller must not think the job queued."""

    def __init__(self, url: str, detail: str = "") -> None:
        self.url = redact_url(url)
        super().__init__(
            f"job queue at {self.url} is unavailable" + (f": {detail}" if detail else "")
        )


class TransientProbeError(RuntimeError):
    """A probe that may succeed later (DNS failure): raised so RQ's Retry re-runs the job."""


def probe_job_id(email: str) -> str:
    return "probe-" + hashlib.sha256(email.lower().encode()).hexdigest()[:32]


def resolve_job_id(domain: str) -> str:
    return "mx-" + hashlib.sha256(domain.strip().lower().rstrip(".").encode()).hexdigest()[:32]


def job_timeout(settings: Settings) -> int:
    """RQ's hard limit for one probe job: the slot wait, DNS, and two MX attempts, plus slack."""
    return int(
        settings.throttle_wait + 3 * settings.dns_timeout + 2 * settings.smtp_probe_deadline + 30
    )


def slot_lease(settings: Settings) -> float:
    """Lease of a queue job's throttle slot: a killed worker's slot is free this long after."""
    return max(SLOT_LEASE_MIN, min(SLOT_LEASE_MAX, settings.smtp_probe_deadline))


@functools.lru_cache(maxsize=8)
def redis_connection(url: str) -> Redis:
    """A client for enqueueing: bounded connect and read timeouts, one quick retry."""
    from redis import Redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry as RedisRetry

    return Redis.from_url(
        url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
        socket_timeout=REDIS_SOCKET_TIMEOUT,
        retry=RedisRetry(ExponentialBackoff(cap=0.2, base=0.05), 1),
    )


# -- enqueueing -------------------------------------------------------------------


def enqueue_probe_email(email_id: int, email: str, domain: str) -> str:
    """Queue one probe; return the job id. The only way probes get queued.

    The job id is derived from the normalised address, so an address already
    queued, scheduled or running is not queued again. Raises QueueUnavailable
    when Redis cannot be reached (the caller then leaves the address unqueued).
    """
    settings = get_settings()
    if settings.redis_url is None:
        return f"local-{email_id}"  # the row's "queued" status is the job
    from rq import Retry

    job_id = probe_job_id(email)
    _enqueue_once(
        settings.redis_url,
        VERIFY_QUEUE,
        job_id,
        job_probe_email,
        (email_id, email, domain),
        retry=Retry(max=RETRY_MAX, interval=list(RETRY_INTERVALS)),
        job_timeout=job_timeout(settings),
        description=f"probe {email}",
    )
    return job_id


def enqueue_resolve_mx(domain: str, force: bool = False) -> str:
    """Queue an MX lookup on `mx` (Redis required); return the job id."""
    settings = get_settings()
    if settings.redis_url is None:
        raise QueueUnavailable("(none)", "REDIS_URL is not set")
    from rq import Retry

    job_id = resolve_job_id(domain)
    _enqueue_once(
        settings.redis_url,
        MX_QUEUE,
        job_id,
        task_resolve_mx,
        (domain, force),
        retry=Retry(max=RETRY_MAX, interval=list(RETRY_INTERVALS)),
        job_timeout=int(4 * settings.dns_timeout + 30),
        description=f"resolve {domain}",
    )
    return job_id


def _enqueue_once(
    url: str,
    queue_name: str,
    job_id: str,
    func: Any,
    args: tuple[Any, ...],
    **options: Any,
) -> None:
    """Enqueue unless a job with this id is live; a short Redis lock makes check+enqueue atomic."""
    from redis.exceptions import RedisError
    from rq import Queue
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    connection = redis_connection(url)
    lock = f"mailprobe:enqueue-lock:{job_id}"
    try:
        if not connection.set(lock, 1, nx=True, px=10_000):
            return  # another caller is enqueueing this very job right now
        try:
            try:
                existing = Job.fetch(job_id, connection=connection)
                if existing.get_status(refresh=False) in _LIVE_STATUSES:
                    return
            except NoSuchJobError:
                pass
            Queue(queue_name, connection=connection).enqueue(
                func,
                *args,
                job_id=job_id,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                **options,
            )
        finally:
            connection.delete(lock)
    except RedisError as exc:
        raise QueueUnavailable(url, str(exc) or type(exc).__name__) from exc


# -- jobs -------------------------------------------------------------------------


def task_probe_email(
    email_id: int | None, email: str, domain: str | None = None, force: bool = False
) -> dict[str, Any]:
    """The seed's job: resolve the MX (cache unless `force`), take a throttle slot for the
    lowest MX, probe with the MX's behaviour hint, store and return the result dict.

    A bad address returns {"ok": False, "error": "bad_input: ..."} rather than raising,
    so it is never retried. Raises ThrottleTimeout when no slot frees up within
    THROTTLE_WAIT (the RQ job, `job_probe_email`, turns that into a re-schedule) and
    ThrottleUnavailable when the shared throttle cannot be reached.
    """
    try:
        address = parse_address(email)
    except (InvalidAddress, TypeError) as exc:
        return _bad_input(email, f"bad_input: {exc}")
    if domain and domain.strip().lower().rstrip(".") not in {address.domain, address.ascii_domain}:
        return _bad_input(email, f"bad_input: domain {domain!r} does not match {email!r}")
    return run_sync(aprobe_in_slot(address.normalized, email_id=email_id, force=force))


def job_probe_email(
    email_id: int | None, email: str, domain: str | None = None, force: bool = False
) -> dict[str, Any] | Retry:
    """What RQ runs on `verify`: `task_probe_email` plus the retry policy.

    No slot in time -> a returned `Retry` (re-scheduled, own budget); a transient
    DNS failure -> TransientProbeError (RQ's Retry re-runs it with backoff).
    """
    from rq import Retry

    try:
        result = task_probe_email(email_id, email, domain, force)
    except ThrottleTimeout as exc:
        log.info("probe of %s rescheduled: %s", email, exc)
        intervals = [i + random.randint(0, i // 2) for i in RESCHEDULE_INTERVALS]
        return Retry(max=RESCHEDULE_MAX, interval=intervals)
    if is_transient(result):
        raise TransientProbeError(f"{email}: {result.get('error') or result.get('reason')}")
    return result


def is_transient(result: dict[str, Any]) -> bool:
    """A result worth retrying later: the domain's or the MX host's DNS lookup failed."""
    return result.get("dns_status") == "dns_error" or result.get("reason") == "dns_error"


def task_resolve_mx(domain: str, force: bool = False) -> dict[str, Any]:
    """The `mx` queue's job: get_or_resolve_mx's dict (cached unless `force`).

    A name that is not a domain returns {"status": "bad_input", "error": ...}."""
    from mailprobe.engine import get_or_resolve_mx

    try:
        return get_or_resolve_mx(domain, force)
    except InvalidAddress as exc:
        return {"domain": domain, "status": "bad_input", "lowest_mx": None, "error": str(exc)}


def make_job_throttle(settings: Settings) -> Throttle:
    """The throttle a queue job probes under: Redis-backed when REDIS_URL is set, so every
    worker on every machine shares the caps. Its leases are short and renewed."""
    throttle = make_throttle(settings)
    if isinstance(throttle, RedisThrottle):
        throttle.lease_seconds = slot_lease(settings)
    return throttle


async def aprobe_in_slot(
    email: str,
    *,
    email_id: int | None = None,
    force: bool = False,
    throttle: Throttle | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Resolve, then probe inside a throttle slot for the lowest MX; penalize the MX when it
    pushed back (421, rate limit); persist the result and the MX behaviour."""
    from mailprobe.engine import aget_or_resolve_mx, default_store, load_behavior, probe_email

    settings = settings or get_settings()
    address = parse_address(email)
    store = default_store(settings)
    own = throttle is None
    throttle = throttle or make_job_throttle(settings)
    try:
        resolution = await aget_or_resolve_mx(address.ascii_domain, force)
        mx = resolution.lowest_mx
        if mx is None:  # nothing to dial, so no slot: the engine answers from DNS
            result = await probe_email(
                address.normalized, email_id=email_id, settings=settings, store=store
            )
        else:
            # A forked job starts with an empty cache: adopt what the fleet knows.
            await asyncio.to_thread(load_behavior, store, resolution.resolution.hosts)
            lease = slot_lease(settings)
            async with (
                throttle.slot(mx, wait=settings.throttle_wait) as slot,
                _renewing(throttle, slot, lease),
            ):
                result = await probe_email(
                    address.normalized, email_id=email_id, settings=settings, store=store
                )
            reason = penalty_reason(result)
            if reason is not None:
                try:
                    await throttle.penalize(result.get("mx_host") or mx, reason=reason)
                except ThrottleError as exc:
                    log.warning("could not penalize %s: %s", mx, exc)
        await asyncio.to_thread(_flush_behavior, store)
    finally:
        if own:
            await throttle.aclose()
    return result


@contextlib.asynccontextmanager
async def _renewing(throttle: Throttle, slot: Slot, lease: float) -> AsyncIterator[None]:
    """Keep a leased slot alive while the body runs (a dead worker stops renewing)."""
    if slot.expires_at is None:  # no lease (in-process throttle)
        yield
        return

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease / 3)
            try:
                if not await throttle.renew(slot, lease):
                    log.warning("throttle slot for %s lost before the probe ended", slot.mx_host)
                    return
            except ThrottleError as exc:
                log.warning("could not renew throttle slot for %s: %s", slot.mx_host, exc)

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _flush_behavior(store: Store) -> None:
    from mailprobe.engine import flush_behavior

    try:
        flush_behavior(store)
    except Exception as exc:  # statistics only: never fail a probe that has been stored
        log.warning("could not store MX behaviour: %s", exc)


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


# -- embedded mode ----------------------------------------------------------------


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


# -- workers ----------------------------------------------------------------------


@functools.cache
def _worker_class(heartbeat_grace: int = HEARTBEAT_GRACE) -> type[Worker]:
    """RQ is imported lazily (embedded mode never needs it), hence a class made on demand."""
    from rq import Worker

    class ProbeWorker(Worker):
        """RQ's forking worker with short job heartbeats: a job whose worker died (SIGKILL,
        lost machine) is found abandoned within ~JOB_HEARTBEAT + HEARTBEAT_GRACE seconds
        rather than RQ's fixed extra minute."""

        def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
            interval = float(self.job_monitoring_interval)
            if job.timeout and job.timeout > 0:
                interval = max(1.0, min(job.timeout - working_time, interval))
            return int(interval) + heartbeat_grace

    return ProbeWorker


def run_worker(
    queues: Sequence[str],
    *,
    burst: bool = False,
    name: str | None = None,
    logging_level: str = "INFO",
    heartbeat: int = JOB_HEARTBEAT,
    heartbeat_grace: int = HEARTBEAT_GRACE,
    maintenance_interval: int = MAINTENANCE_INTERVAL,
) -> int:
    """Serve `queues` (of "mx", "verify") from REDIS_URL until stopped; return an exit status.

    Runs RQ's scheduler too (re-scheduled and retried jobs need it). Returns 2 with a
    message on stderr when the settings are bad, REDIS_URL is missing or Redis does
    not answer, or the database cannot be opened. `burst` exits when the queues are
    empty. The heartbeat/maintenance knobs set how soon a killed worker's job re-runs.
    """
    from redis.exceptions import RedisError

    from mailprobe.engine import default_store
    from mailprobe.store.database import StoreError

    def fail(message: str) -> int:
        print(f"mailprobe worker: {message}", file=sys.stderr)
        return 2

    try:
        settings = get_settings()
    except ConfigError as exc:
        return fail(f"configuration error: {exc}")
    if not settings.redis_url:
        return fail("REDIS_URL is not set: a worker serves Redis queues (redis://host:6379/0)")
    unknown = [q for q in queues if q not in QUEUES]
    if unknown or not queues:
        return fail(f"unknown queue(s) {unknown or queues!r}: choose from {', '.join(QUEUES)}")
    shown = redact_url(settings.redis_url)
    try:
        redis_connection(settings.redis_url).ping()
    except RedisError as exc:
        return fail(f"Redis at {shown} is unreachable: {exc or type(exc).__name__}")
    try:  # migrate once here; forked jobs then open their own connections
        default_store(settings).engine.dispose()
    except StoreError as exc:
        return fail(f"database error: {exc}")
    from redis import Redis

    connection = Redis.from_url(settings.redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT)
    worker = _worker_class(heartbeat_grace)(
        list(queues),
        name=name,
        connection=connection,
        job_monitoring_interval=heartbeat,
        maintenance_interval=maintenance_interval,
        # an idle worker wakes every `maintenance_interval` s (dequeue timeout = ttl - 15)
        worker_ttl=maintenance_interval + 15,
    )
    log.info("worker for %s on %s (burst=%s)", ",".join(queues), shown, burst)
    try:
        worker.work(burst=burst, with_scheduler=True, logging_level=logging_level)
    except RedisError as exc:
        return fail(f"lost Redis at {shown}: {exc}")
    return 0


# -- bulk verification through the fleet (`mailprobe verify --enqueue`) -------------

BATCH_SIZE = 50  # addresses of one domain per job: one worker reuses one session for them
MAX_JOBS_IN_FLIGHT = 200  # bounds the memory of the enqueueing process


def job_verify_batch(lines: list[tuple[int, str]], force: bool = False) -> list[dict[str, Any]]:
    """A worker's job: verify one domain's batch with the bulk engine, under the fleet's
    Redis throttle, and return one record per line."""
    from mailprobe.engine.bulk import BulkOptions, verify
    from mailprobe.inputs import entry

    settings = get_settings()
    records: list[dict[str, Any]] = []

    async def run() -> None:
        throttle = make_job_throttle(settings)
        try:
            await verify(
                [entry(n, raw) for n, raw in lines],
                records.append,
                settings=settings,
                options=BulkOptions(reuse_ttl=None if force else 86400.0),
                throttle=throttle,
            )
        finally:
            await throttle.aclose()

    run_sync(run())
    return records


def enqueue_verify(
    lines: Any, sink: Any, *, force: bool = False, poll: float = 0.5
) -> tuple[int, int]:
    """Split the input into per-domain batches, queue them on `verify`, and hand every
    record to `sink` as its batch finishes. Returns (jobs, lines). A batch whose job
    fails is answered too (verdict unknown, reason job_failed): no line is lost."""
    import time

    from rq import Queue, Retry
    from rq.job import Job

    settings = get_settings()
    if settings.redis_url is None:
        raise QueueUnavailable("(none)", "REDIS_URL is not set: --enqueue needs workers")
    connection = redis_connection(settings.redis_url)
    queue = Queue(VERIFY_QUEUE, connection=connection)
    timeout = int(job_timeout(settings) + sum((60.0, 300.0, 900.0)) + 600)
    pending: dict[str, list[tuple[int, str]]] = {}
    groups: dict[str, list[tuple[int, str]]] = {}
    jobs = count = 0

    def submit(batch: list[tuple[int, str]]) -> None:
        nonlocal jobs
        try:
            job = queue.enqueue(
                job_verify_batch, batch, force, job_timeout=timeout, result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL, retry=Retry(max=RETRY_MAX, interval=list(RETRY_INTERVALS)),
            )  # fmt: skip
        except Exception as exc:
            raise QueueUnavailable(settings.redis_url or "", str(exc)) from exc
        pending[job.id] = batch
        jobs += 1

    def collect(block: bool) -> None:
        while pending and (block or len(pending) >= MAX_JOBS_IN_FLIGHT):
            done = False
            for job in Job.fetch_many(list(pending), connection=connection):
                if job is None:
                    continue
                status = job.get_status(refresh=False)
                if status == "finished":
                    for record in job.return_value() or []:
                        sink(record)
                elif status in {"failed", "canceled", "stopped"}:
                    for line_no, raw in pending[job.id]:
                        sink(_job_failed_record(line_no, raw, job.id))
                else:
                    continue
                del pending[job.id]
                done = True
            if not done:
                time.sleep(poll)

    for line in lines:
        count += 1
        if line.address is None:
            sink(_job_failed_record(line.line_no, line.raw, None, invalid=line.error))
            continue
        group = groups.setdefault(line.address.ascii_domain, [])
        group.append((line.line_no, line.raw))
        if len(group) >= BATCH_SIZE:
            submit(groups.pop(line.address.ascii_domain))
            collect(block=False)
    for batch in groups.values():
        submit(batch)
        collect(block=False)
    collect(block=True)
    return jobs, count


def _job_failed_record(
    line_no: int, raw: str, job_id: str | None, invalid: str | None = None
) -> dict[str, Any]:
    return {
        "line": line_no, "email": raw,
        "verdict": "undeliverable" if invalid else "unknown",
        "reason": "invalid_syntax" if invalid else "job_failed",
        "category": "unknown", "code": None, "enhanced_status": None,
        "message": invalid or f"queue job {job_id} failed: see RQ's failed registry",
        "mx_host": None, "catch_all": None, "flags": {}, "attempts": 0, "elapsed_ms": 0,
        "reused": False,
    }  # fmt: skip
