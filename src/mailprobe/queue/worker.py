"""`mailprobe worker`: RQ's forking worker with short job heartbeats, and its checks at start."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mailprobe.config import ConfigError, get_settings
from mailprobe.queue import (
    HEARTBEAT_GRACE,
    JOB_HEARTBEAT,
    MAINTENANCE_INTERVAL,
    QUEUES,
    REDIS_CONNECT_TIMEOUT,
    redis_connection,
)
from mailprobe.redact import redact_url

if TYPE_CHECKING:
    from rq import Worker
    from rq.job import Job

log = logging.getLogger(__name__)


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

    from mailprobe.store import StoreError, open_store

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
        open_store(settings.database_url).engine.dispose()
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
