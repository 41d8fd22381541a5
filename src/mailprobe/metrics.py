"""Prometheus metrics (prometheus-client, the `serve` extra), every name prefixed `mailprobe_`.

The engine knows nothing of them: a face counts the answers it is handed
(`Metrics.answered`, from the bulk sink or a single probe) and wraps the throttle it
gives the engine (`MeteredThrottle`), which sees every session's slot (its wait,
how long it is held, how many are open per MX class) and every penalty (421s and
rate limits). `mailprobe serve` exposes them at /metrics; `mailprobe verify` and
`mailprobe worker` on `--metrics-port`. Queue jobs run in forked children (RQ's work
horses): the worker uses prometheus-client's multiprocess mode, and `HorseMetrics`
folds each ended horse's counts into one file.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector

from mailprobe.throttle import Slot, Throttle, ThrottleTimeout, ThrottleWrapper

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from mailprobe.results import Answer

__all__ = [
    "CONTENT_TYPE_LATEST",
    "METRICS",
    "HorseMetrics",
    "MeteredThrottle",
    "Metrics",
    "exposition",
    "serve_metrics",
    "worker_metrics",
]

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The process's metrics; faces report to the one instance, `METRICS` (a worker serving
    them makes its own, in multiprocess mode and in no registry: `HorseMetrics` reads them)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        r = registry
        self.probes = Counter(
            "mailprobe_probes",
            "Addresses answered, by verdict and reason.",
            ["verdict", "reason"],
            registry=r,
        )
        self.rcpt_seconds = Histogram(
            "mailprobe_rcpt_seconds",
            "Time the conversation that answered an address took (reused answers excluded).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.session_seconds = Histogram(
            "mailprobe_session_seconds",
            "How long an SMTP session held its throttle slot, by MX class.",
            ["mx_class"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions_open = Gauge(
            "mailprobe_sessions_open",
            "SMTP sessions open now (throttle slots held), by MX class.",
            ["mx_class"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.throttle_wait_seconds = Histogram(
            "mailprobe_throttle_wait_seconds",
            "Time spent waiting for a throttle slot before a session could start.",
            buckets=(0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.throttle_refusals = Counter(
            "mailprobe_throttle_refusals",
            "Slot requests the throttle refused (a cap was full), by the cap that was.",
            ["limited_by"],
            registry=r,
        )
        self.penalties = Counter(
            "mailprobe_throttle_penalties",
            "Times an MX told us to slow down (421, rate limit), by reason.",
            ["reason"],
            registry=r,
        )
        self.retries_pending = Gauge(
            "mailprobe_retries_pending",
            "Addresses a finished run left waiting for a retry (--no-wait).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.webhooks = Counter(
            "mailprobe_webhook_deliveries",
            "Webhook delivery attempts, by event and outcome (ok, failed, refused).",
            ["event", "outcome"],
            registry=r,
        )
        self.http_requests = Counter(
            "mailprobe_http_requests",
            "HTTP API requests, by route and status code.",
            ["route", "status"],
            registry=r,
        )

    def answered(self, answer: Answer) -> None:
        """One address's final answer (a bulk sink's LineAnswer.answer, a single probe's)."""
        self.probes.labels(answer.verdict.value, answer.reason).inc()
        if not answer.reused and answer.outcome.stage not in {"input", "dns"}:
            self.rcpt_seconds.observe(answer.outcome.elapsed_ms / 1000.0)

    def answers(self, answers: Iterable[Answer]) -> None:
        for answer in answers:
            self.answered(answer)


METRICS = Metrics()


def mx_class(throttle: Throttle, mx_host: str) -> str:
    """The MX_LIMITS pattern an MX host falls under ("*.google.com"), else "default": a label
    with as few values as the configuration has patterns, never one per host."""
    host = mx_host.strip().lower().rstrip(".")
    for limit in throttle.policy.overrides:
        if limit.matches(host):
            return limit.pattern
    return "default"


class MeteredThrottle(ThrottleWrapper):
    """A throttle that reports its slots and penalties, and otherwise is the one it wraps.
    Faces hand it to the engine (`Context.create(throttle=...)`), so no engine code counts."""

    def __init__(self, inner: Throttle, metrics: Metrics = METRICS) -> None:
        super().__init__(inner)
        self.metrics = metrics
        self._held: dict[str, tuple[float, str]] = {}  # slot token -> (acquired at, class)

    async def acquire(
        self, mx_host: str, *, wait: float | None = None, rcpts: int = 1, priority: bool = False
    ) -> Slot:
        started = time.monotonic()
        try:
            slot = await self.inner.acquire(mx_host, wait=wait, rcpts=rcpts, priority=priority)
        except ThrottleTimeout as exc:
            self.metrics.throttle_refusals.labels(exc.limited_by or "unknown").inc()
            raise
        waited = time.monotonic() - started
        if wait != 0:  # the bulk scheduler asks without waiting: nothing to time there
            self.metrics.throttle_wait_seconds.observe(waited)
        label = mx_class(self.inner, mx_host)
        self._held[slot.token] = (time.monotonic(), label)
        self.metrics.sessions_open.labels(label).inc()
        return slot

    async def release(self, slot: Slot) -> None:
        held = self._held.pop(slot.token, None)
        if held is not None:
            since, label = held
            self.metrics.sessions_open.labels(label).dec()
            self.metrics.session_seconds.labels(label).observe(time.monotonic() - since)
        await self.inner.release(slot)

    async def penalize(self, mx_host: str, *, reason: str) -> None:
        self.metrics.penalties.labels(reason).inc()
        await self.inner.penalize(mx_host, reason=reason)


class StateGauge(Collector):
    """A gauge read at scrape time from a callable (jobs by state, read from the database)."""

    def __init__(self, name: str, doc: str, label: str, read: Callable[[], dict[str, int]]):
        self.name, self.doc, self.label, self.read = name, doc, label, read

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.name, self.doc, labels=[self.label])
        try:
            values = self.read()
        except Exception:  # a scrape never fails because the database is busy
            values = {}
        for value, count in sorted(values.items()):
            family.add_metric([value], count)
        yield family


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The metrics in Prometheus' text format (multiprocess-aware when so configured)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
    return generate_latest(registry)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """/metrics on `port` from a daemon thread (`verify` and `worker --metrics-port`)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=host, registry=registry)
    else:
        start_http_server(port, addr=host)


class HorseMetrics(Collector):
    """/metrics of a forking RQ worker, whose jobs each run in a child (a work horse).

    A count made in a horse would die with it, so the worker runs prometheus-client's
    multiprocess mode: each process writes its values to files named by its pid in
    `path`, and a scrape merges them. RQ forks a new horse per job, so those files would
    grow by three per job and every scrape would read them all, slower and slower
    (prometheus/client_python#204 and #367; the library has no compaction because it
    cannot know when a pid is dead for good: #518). The worker does know: `ended(pid)`
    is called once it has reaped the horse and before it forks the next one, so no
    process can write those files again. It folds the horse's counters and histograms
    into one `*_archive.db` per type, drops its live gauges (`mark_process_dead`), and
    deletes its files; a lock shared with `collect` keeps a scrape from ever seeing a
    count twice or not at all (a counter that dipped would read as a reset).
    """

    FOLDED = ("counter", "histogram")

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._archives: dict[str, MmapedDict] = {}

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        with self.lock:
            files = glob.glob(os.path.join(self.path, "*.db"))
            merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
            return list(merged)

    def ended(self, pid: int) -> None:
        """Fold a reaped horse's files into the archives (see the class)."""
        from prometheus_client.multiprocess import mark_process_dead

        with self.lock:
            mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]
            for typ in self.FOLDED:
                name = os.path.join(self.path, f"{typ}_{pid}.db")
                if not os.path.exists(name):
                    continue
                archive = self._archives.get(typ)
                if archive is None:
                    archive = MmapedDict(os.path.join(self.path, f"{typ}_archive.db"))  # type: ignore[no-untyped-call]
                    self._archives[typ] = archive
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(name):  # type: ignore[no-untyped-call]
                    total, _ = archive.read_value(key)  # type: ignore[no-untyped-call]
                    archive.write_value(key, total + value, timestamp)  # type: ignore[no-untyped-call]
                os.remove(name)

    def close(self) -> None:
        with self.lock:
            for archive in self._archives.values():
                archive.close()  # type: ignore[no-untyped-call]
            self._archives.clear()


def worker_metrics(port: int, path: str, host: str = "127.0.0.1") -> tuple[Metrics, HorseMetrics]:
    """A worker's metrics in multiprocess mode under `path` (an empty directory of its own),
    served on `port` (OSError when it cannot listen). The value class is chosen again here,
    as prometheus-client picks it when first imported, maybe before the variable was set."""
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    collector = HorseMetrics(path)
    registry = CollectorRegistry()
    registry.register(collector)
    start_http_server(port, addr=host, registry=registry)
    return Metrics(registry=None), collector
