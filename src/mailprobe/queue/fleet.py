"""Bulk verification through the fleet (`mailprobe verify --enqueue`): per-domain batches as
RQ jobs on `verify`, each run by a worker's bulk engine under the shared Redis throttle."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import replace
from typing import Any

from mailprobe.config import get_settings
from mailprobe.queue import (
    FAILURE_TTL,
    RESULT_TTL,
    RETRY_INTERVALS,
    RETRY_MAX,
    VERIFY_QUEUE,
    QueueUnavailable,
    counted,
    job_timeout,
    make_job_throttle,
    redis_connection,
)
from mailprobe.report import render_record
from mailprobe.results import LineAnswer, Outcome, answer_for, invalid_answer
from mailprobe.smtp import run_sync

_NOT_STARTED = frozenset({"queued", "scheduled", "deferred"})
BATCH_SIZE = 50  # addresses of one domain per job: one worker reuses one session for them
MAX_JOBS_IN_FLIGHT = 200  # bounds the memory of the enqueueing process


def job_verify_batch(lines: list[tuple[int, str]], force: bool = False) -> list[dict[str, Any]]:
    """A worker's job: verify one domain's batch with the bulk engine, under the fleet's
    Redis throttle, and return one record per line."""
    from mailprobe.engine import Context
    from mailprobe.engine.bulk import BulkOptions, verify
    from mailprobe.inputs import entry

    settings = get_settings()
    records: list[dict[str, Any]] = []

    def answered(line: LineAnswer) -> None:
        counted(line.answer)
        records.append(render_record(line))

    async def run() -> None:
        ctx = Context.create(settings, throttle=make_job_throttle(settings))
        try:
            await verify(
                [entry(n, raw, {}, settings.special_use_allowed) for n, raw in lines],
                answered,
                ctx=ctx,
                options=BulkOptions(reuse_ttl=None if force else 86400.0),
            )
        finally:
            await ctx.aclose()

    run_sync(run())
    return records


class Stopped(Exception):
    """`enqueue_verify` was told to stop; its batches no worker had started were cancelled."""


def enqueue_verify(
    lines: Any,
    sink: Any,
    *,
    force: bool = False,
    poll: float = 0.5,
    stop: threading.Event | None = None,
) -> tuple[int, int]:
    """Split the input into per-domain batches, queue them on `verify`, and hand every
    record to `sink` as its batch finishes. Returns (jobs, lines). A batch whose job
    fails is answered too (verdict unknown, reason job_failed): no line is lost.

    `stop` (serve branch: a job cancelled or a server stopping) ends the wait within
    `poll` seconds with Stopped, after cancelling the batches still on the queue, so no
    worker runs them for nobody (a batch already started runs to its end and stores
    its answers, which the next run reuses)."""
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
            if done:
                continue
            if stop is None:
                time.sleep(poll)
            elif stop.wait(poll):
                abandon()

    def abandon() -> None:
        for job in Job.fetch_many(list(pending), connection=connection):
            if job is not None and job.get_status(refresh=False) in _NOT_STARTED:
                with contextlib.suppress(Exception):  # taken by a worker meanwhile: it runs
                    job.cancel()
        raise Stopped(f"stopped with {len(pending)} batch(es) out")

    for line in lines:
        count += 1
        if line.address is None:
            sink(_job_failed_record(line.line_no, line.raw, None, line.error, line.reason))
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
    line_no: int,
    raw: str,
    job_id: str | None,
    invalid: str | None = None,
    reason: str = "invalid_syntax",
) -> dict[str, Any]:
    """The record of a line no worker answered (or that is no address): never lost."""
    if invalid is not None:
        answer = invalid_answer(raw, invalid, reason)
    else:
        error = f"queue job {job_id} failed: see RQ's failed registry"
        outcome = Outcome(email=raw, reason="job_failed", stage="queue", error=error)
        answer = answer_for(outcome, attempts=0)  # decide(): unknown, job_failed
    shown = replace(answer, outcome=answer.outcome.with_evidence(message=answer.outcome.error))
    return render_record(LineAnswer(line_no, raw, shown))
