"""Running bulk jobs: the lines a job has not answered yet go to the bulk engine (or, with
REDIS_URL, to the RQ workers), and each record is written back to the job as it comes.

A job's lines are in the database from the start, and a line counts as done only once
its record is stored there, so a server stopped mid-job (and started again) asks
only the lines still unanswered; the engine's own reuse of stored answers covers the
few answered in the moment before the stop. A duplicate address in a job is asked
once: its later lines take the first line's record (`jobstore.save_records`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mailprobe.engine.bulk import BulkOptions, ServiceLost, verify
from mailprobe.engine.context import Context
from mailprobe.inputs import InputLine, entry
from mailprobe.metrics import METRICS
from mailprobe.report import render_record
from mailprobe.results import LineAnswer
from mailprobe.serve import jobstore
from mailprobe.serve.config import ServeConfig
from mailprobe.serve.drain import DrainingThrottle
from mailprobe.serve.webhooks import Dispatcher
from mailprobe.store import StoreError

log = logging.getLogger(__name__)
FLUSH_INTERVAL = 0.25  # seconds between writes of a job's new records
DRAIN_MARGIN = 5.0  # seconds past a probe's deadline a stopping server waits for sessions


class Cancelled(Exception):
    """The job was cancelled while its lines were out with the workers."""


class JobRunner:
    """Runs the database's active jobs, `config.job_concurrency` at a time."""

    def __init__(
        self,
        ctx: Context,
        config: ServeConfig,
        webhooks: Dispatcher,
        throttle: DrainingThrottle | None = None,
    ) -> None:
        self.ctx = ctx
        self.throttle = throttle
        self.store = ctx.store
        self.config = config
        self.webhooks = webhooks
        self.running: dict[str, asyncio.Task[None]] = {}
        self.progress: dict[str, tuple[float, int]] = {}  # job -> (monotonic start, done then)
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop every job where it is: no new SMTP session starts, the open ones end (at most
        a probe's deadline), their answers are stored; the rest resumes at the next start."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self.throttle is not None and self.running:
            self.throttle.close()
            deadline = self.ctx.settings.smtp_probe_deadline + DRAIN_MARGIN
            if not await self.throttle.drained(deadline):
                log.warning("sessions still open after %.0f s: cut", deadline)
            # their answers reach the job
            await asyncio.sleep(FLUSH_INTERVAL * 2)
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job: no more lines are asked; what was answered stays downloadable."""
        changed = await asyncio.to_thread(jobstore.set_status, self.store, job_id, "cancelled")
        task = self.running.get(job_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if changed:
            job = await asyncio.to_thread(jobstore.get_job, self.store, job_id)
            if job is not None:
                self.webhooks.finished(job)
        return changed

    def rate(self, job_id: str, done: int) -> float | None:
        """Lines answered a second since this process took the job up."""
        started = self.progress.get(job_id)
        if started is None:
            return None
        elapsed = time.monotonic() - started[0]
        return (done - started[1]) / elapsed if elapsed > 0 else 0.0

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                ids = await asyncio.to_thread(jobstore.active_jobs, self.store)
            except StoreError as exc:
                log.warning("cannot read the jobs: %s", exc)
                ids = []
            for job_id in ids:
                if len(self.running) >= self.config.job_concurrency:
                    break
                if job_id not in self.running:
                    task = asyncio.create_task(self._run(job_id))
                    self.running[job_id] = task
                    task.add_done_callback(functools.partial(self._ended, job_id))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0)

    def _ended(self, job_id: str, _task: object = None) -> None:
        self.running.pop(job_id, None)
        self.progress.pop(job_id, None)
        self._wake.set()

    async def _run(self, job_id: str) -> None:
        job = await asyncio.to_thread(jobstore.get_job, self.store, job_id)
        if job is None or job.status not in jobstore.ACTIVE:
            return
        await asyncio.to_thread(jobstore.set_status, self.store, job_id, "running")
        self.progress[job_id] = (time.monotonic(), job.done)
        todo = await asyncio.to_thread(jobstore.unanswered, self.store, job_id)
        allowed = self.ctx.settings.special_use_allowed
        lines = [entry(n, raw, extra, allowed) for n, raw, extra in todo]
        pending: list[dict[str, Any]] = []

        async def flush() -> None:
            batch = pending[:]
            del pending[: len(batch)]
            stored = await asyncio.to_thread(jobstore.save_records, self.store, job_id, batch)
            for _, record in stored:
                self.webhooks.address(job, record)

        async def flusher() -> None:
            while True:
                await asyncio.sleep(FLUSH_INTERVAL)
                if pending:
                    await flush()

        writer = asyncio.create_task(flusher())
        error: str | None = None
        try:
            if self.ctx.settings.redis_url:
                await self._on_workers(job_id, lines, pending.append, force=job.force)
            else:
                await self._in_process(lines, pending.append, force=job.force)
        except asyncio.CancelledError:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            with contextlib.suppress(StoreError):
                await flush()  # what was answered before the stop is kept
            raise
        except (ServiceLost, StoreError, Cancelled) as exc:
            error = str(exc)
        except Exception as exc:  # the job fails with its reason; the server goes on
            log.exception("job %s failed", job_id)
            error = f"{type(exc).__name__}: {exc}"
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await flush()
        status = "failed" if error else "done"
        if await asyncio.to_thread(jobstore.set_status, self.store, job_id, status, error=error):
            finished = await asyncio.to_thread(jobstore.get_job, self.store, job_id)
            if finished is not None:
                self.webhooks.finished(finished)

    async def _in_process(
        self, lines: list[InputLine], sink: Callable[[dict[str, Any]], None], *, force: bool
    ) -> None:
        settings = self.ctx.settings
        options = BulkOptions(
            greylist_first_retry=settings.greylist_first_retry,
            greylist_max_delay=settings.greylist_max_delay,
            reuse_ttl=None if force else 86400.0,
            reuse_unknown_ttl=0.0 if force else None,
        )

        def answered(line: LineAnswer) -> None:
            METRICS.answered(line.answer)
            sink(render_record(line))

        summary = await verify(lines, answered, ctx=self.ctx, options=options)
        METRICS.retries_pending.set(summary.pending)

    async def _on_workers(
        self,
        job_id: str,
        lines: list[InputLine],
        sink: Callable[[dict[str, Any]], None],
        *,
        force: bool,
    ) -> None:
        """REDIS_URL: per-domain batches to the RQ workers (`verify --enqueue`'s path),
        waited on from a thread. A cancel (the job's, or a stopping server's) tells the
        thread to stop: it cancels the batches no worker has started and ends within a
        poll, so a stopping server does not wait on workers (nor leave them work for nobody).
        """
        from mailprobe.queue.fleet import Stopped, enqueue_verify

        stop = threading.Event()
        loop = asyncio.get_running_loop()

        def record(rec: dict[str, Any]) -> None:
            if stop.is_set():
                raise Cancelled(f"job {job_id} cancelled")
            loop.call_soon_threadsafe(sink, rec)

        try:
            await asyncio.to_thread(enqueue_verify, lines, record, force=force, stop=stop)
        except Stopped as exc:
            raise Cancelled(f"job {job_id} cancelled") from exc
        finally:
            stop.set()
