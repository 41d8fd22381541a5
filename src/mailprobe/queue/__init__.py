"""Queue jobs: probes on queue `verify`, MX lookups (`task_resolve_mx`) on `mx`.

A thin face: each job calls the engine in a few lines. `worker` runs RQ workers,
`fleet` spreads bulk verification over them.

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

import functools
import hashlib
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mailprobe.address import InvalidAddress, parse_address
from mailprobe.config import Settings, get_settings
from mailprobe.engine import Context, IngestReport, probe_in_slot, probe_queued, upsert_address
from mailprobe.engine import ingest as engine_ingest
from mailprobe.redact import redact_url
from mailprobe.results import Outcome
from mailprobe.smtp import run_sync
from mailprobe.store import Store
from mailprobe.throttle import RedisThrottle, Throttle, ThrottleTimeout, make_throttle

if TYPE_CHECKING:
    from redis import Redis
    from rq import Retry

    from mailprobe.metrics import Metrics
    from mailprobe.results import Answer

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
    """RQ's hard limit for one probe job: the slot wait, DNS (patient: up to DNS_MAX_TIMEOUT
    for the domain and each of two MX hosts), and two MX attempts, plus slack."""
    dns = 3 * settings.dns_max_timeout
    return int(settings.throttle_wait + dns + 2 * settings.smtp_probe_deadline + 30)


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
        job_timeout=int(settings.dns_max_timeout + 4 * settings.dns_timeout + 30),
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
    """The seed's R16 job: resolve the MX (cache unless `force`), take a throttle slot for the
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
    settings = get_settings()

    async def run() -> dict[str, Any]:
        ctx = Context.create(settings, throttle=make_job_throttle(settings))
        try:
            answer = counted(await probe_in_slot(
                ctx, address.normalized, email_id=email_id, force=force,
                lease=slot_lease(settings),
            ))  # fmt: skip
        finally:
            await ctx.aclose()
        return answer.as_seed_dict()

    return run_sync(run())


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
    worker on every machine shares the caps. Its leases are short and renewed. Metered
    (sessions, waits, penalties) when the worker serves metrics."""
    throttle = make_throttle(settings)
    if isinstance(throttle, RedisThrottle):
        throttle.lease_seconds = slot_lease(settings)
    if job_metrics is not None:
        from mailprobe.metrics import MeteredThrottle

        return MeteredThrottle(throttle, job_metrics)
    return throttle


# serve branch: `mailprobe worker --metrics-port` sets this before the worker forks its
# first job, so each job (a forked work horse) counts into the worker's multiprocess
# metrics; None (the default) counts nothing and never imports prometheus-client.
job_metrics: Metrics | None = None


def counted(answer: Answer) -> Answer:
    """A job's final answer, counted by verdict and reason when the worker serves metrics."""
    if job_metrics is not None:
        job_metrics.answered(answer)
    return answer


def _bad_input(email: str, error: str) -> dict[str, Any]:
    outcome = Outcome.bad_input(email, error, helo_domain=get_settings().smtp_helo_domain)
    return outcome.as_seed_dict()


# -- the seed's address store with its enqueue seam ----------------------------------


def upsert_generated_email(
    email: str,
    *,
    person_name: str | None = None,
    source: str | None = None,
    enqueue_probe: bool = True,
    store: Store | None = None,
) -> int:
    """The seed's upsert: store the address once and, with `enqueue_probe`, queue its
    probe once through `enqueue_probe_email` (freemail skipped unless PROBE_FREEMAIL)."""
    return upsert_address(
        email,
        person_name=person_name,
        source=source,
        store=store,
        enqueue=_enqueue if enqueue_probe else None,
    )


def ingest(
    source: str | Path | TextIO,
    *,
    store: Store | None = None,
    enqueue_probe: bool = False,
    source_name: str | None = None,
    column: str | None = None,
) -> IngestReport:
    """Store a list's addresses; with `enqueue_probe`, queue each probe once."""
    return engine_ingest(
        source,
        store=store,
        enqueue=_enqueue if enqueue_probe else None,
        source_name=source_name,
        column=column,
    )


def _enqueue(email_id: int, email: str, domain: str) -> str:
    return enqueue_probe_email(email_id, email, domain)  # looked up at call time (tests patch it)


# -- embedded mode ----------------------------------------------------------------


def run_queued(limit: int | None = None) -> list[dict[str, Any]]:
    """Embedded mode: probe every address left "queued" in the database, in this process."""

    async def run() -> list[dict[str, Any]]:
        ctx = Context.create()
        return [answer.as_seed_dict() for answer in await probe_queued(ctx, limit)]

    return run_sync(run())
