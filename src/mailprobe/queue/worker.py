"""`mailprobe worker`: RQ's forking worker with short job heartbeats, and its checks at start."""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

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
    from rq import Queue, Worker
    from rq.job import Job

log = logging.getLogger(__name__)


@functools.cache
def _worker_class(heartbeat_grace: int = HEARTBEAT_GRACE) -> type[Worker]:
    """RQ is imported lazily (embedded mode never needs it), hence a class made on demand."""
    from rq import Worker

    class ProbeWorker(Worker):
        """RQ's forking worker with short job heartbeats: a job whose worker died (SIGKILL,
        lost machine) is found abandoned within ~JOB_HEARTBEAT + HEARTBEAT_GRACE seconds
        rather than RQ's fixed extra minute. `horse_ended` (the metrics' fold) is called
        with each work horse's pid once it is reaped, before the next job is forked."""

        horse_ended: Callable[[int], None] | None = None
        last_horse = 0

        def execute_job(self, job: Job, queue: Queue) -> None:
            try:
                super().execute_job(job, queue)
            finally:
                pid, self.last_horse = self.last_horse, 0
                if pid and self.horse_ended is not None:
                    self.horse_ended(pid)

        def fork_work_horse(self, job: Job, queue: Queue) -> None:
            super().fork_work_horse(job, queue)
            self.last_horse = self._horse_pid  # monitor_work_horse zeroes _horse_pid

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
    metrics_port: int | None = None,
) -> int:
    """Serve `queues` (of "mx", "verify") from REDIS_URL until stopped; return an exit status.

    Runs RQ's scheduler too (re-scheduled and retried jobs need it). Returns 2 with a
    message on stderr when the settings are bad, REDIS_URL is missing or Redis does
    not answer, or the database cannot be opened. `burst` exits when the queues are
    empty. The heartbeat/maintenance knobs set how soon a killed worker's job re-runs.
    `metrics_port` serves Prometheus /metrics (loopback) with what the jobs count.
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
    with contextlib.ExitStack() as stack:
        horse_ended = None
        if metrics_port is not None:
            try:
                horse_ended = _serve_metrics(metrics_port, stack)
            except ModuleNotFoundError:
                return fail("--metrics-port needs the serve extra: pip install 'mailprobe[serve]'")
            except OSError as exc:
                return fail(f"--metrics-port {metrics_port}: {exc.strerror or exc}")
        return _work(settings.redis_url, queues, burst, name, logging_level, heartbeat,
                     heartbeat_grace, maintenance_interval, horse_ended)  # fmt: skip


def _serve_metrics(port: int, stack: contextlib.ExitStack) -> Callable[[int], None]:
    """Metrics for the jobs this worker forks, served on `port`; returns the fold to call
    with each reaped horse's pid.

    Why multiprocess mode and not RQ's non-forking SimpleWorker: the forking worker's
    parent heart-beats the running job every JOB_HEARTBEAT s and kills a horse that
    overstays its timeout, which is how a killed worker's job is re-run within seconds
    (the SimpleWorker's job heartbeat lasts the job's whole timeout plus a minute), and a
    horse leaves no memory or stuck thread behind. So the counts are written by each
    horse to files of its own in a temporary directory that lives as long as the worker.
    """
    import mailprobe.queue as jobs
    from mailprobe.metrics import worker_metrics

    path = tempfile.mkdtemp(prefix="mailprobe-worker-metrics-")
    stack.callback(shutil.rmtree, path, ignore_errors=True)
    metrics, collector = worker_metrics(port, path)
    stack.callback(collector.close)
    jobs.job_metrics = metrics
    return collector.ended


def _work(
    redis_url: str,
    queues: Sequence[str],
    burst: bool,
    name: str | None,
    logging_level: str,
    heartbeat: int,
    heartbeat_grace: int,
    maintenance_interval: int,
    horse_ended: Callable[[int], None] | None,
) -> int:
    from redis import Redis
    from redis.exceptions import RedisError

    shown = redact_url(redis_url)
    connection = Redis.from_url(redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT)
    worker: Any = _worker_class(heartbeat_grace)(
        list(queues),
        name=name,
        connection=connection,
        job_monitoring_interval=heartbeat,
        maintenance_interval=maintenance_interval,
        # an idle worker wakes every `maintenance_interval` s (dequeue timeout = ttl - 15)
        worker_ttl=maintenance_interval + 15,
    )
    worker.horse_ended = horse_ended
    log.info("worker for %s on %s (burst=%s)", ",".join(queues), shown, burst)
    try:
        worker.work(burst=burst, with_scheduler=True, logging_level=logging_level)
    except RedisError as exc:
        print(f"mailprobe worker: lost Redis at {shown}: {exc}", file=sys.stderr)
        return 2
    return 0
