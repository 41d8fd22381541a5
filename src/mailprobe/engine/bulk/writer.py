"""Persistence of a run, in batches: answers, MX answers, what the MX hosts showed.

A run of many addresses must not cost a commit per address: answers wait here and
are written every 0.2 s (or 200 at a time) with `queries.add_answers`; the MX
answers DNS gave are written as they come in the same rhythm; the behaviour cache
every few seconds. A database that writes slower than the servers answer holds the
input back (`room`), so memory stays bounded; one that stays down stops the run with
its reason. The records are already in the output by then: nothing is lost but rows.

How rows are stored is injectable (`store_answers`): tests slow it down or break it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from mailprobe.engine.bulk.options import BEHAVIOR_FLUSH_INTERVAL, MAX_UNSTORED_ROWS
from mailprobe.engine.context import Context
from mailprobe.results import Answer
from mailprobe.store import StoreError
from mailprobe.store import queries as q

log = logging.getLogger(__name__)
BATCH_ROWS = 200  # answers that wake the writer before its next tick
TICK = 0.2  # seconds between writes
FINAL_RETRY = 1.0  # seconds between the last writes' tries while the database refuses
GIVE_UP_AFTER = 3  # rows refused alone, none stored: the database is down, not the rows

Row = tuple[Answer, int | None]  # an answer and its address's id, if stored
StoreAnswers = Callable[[list[Row]], None]  # runs in a thread; raises StoreError


class Writer:
    """Collects answers; `run()` writes them as it goes; `finish()` writes the rest."""

    def __init__(
        self,
        ctx: Context,
        *,
        store_answers: StoreAnswers | None = None,
        max_unstored: int = MAX_UNSTORED_ROWS,
        on_failure: Callable[[Exception], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.store_answers = store_answers or self._store_answers
        self.max_unstored = max_unstored
        self._rows: list[Row] = []
        self._wake = asyncio.Event()
        self._stored = asyncio.Event()  # a flush finished (or failed)
        self._failure: StoreError | None = None  # answers could not be stored, for good
        self._stopping = False
        self.set_aside = 0  # answers the database refused even alone (logged, in the output)
        self._findings: dict[str, bool] = {}  # catch-all findings waiting to be stored
        self._refusing_since: float | None = None  # when the database began refusing writes
        self.on_failure = on_failure  # told when the database refused writes for too long

    @property
    def backlog(self) -> int:
        """Answers waiting to be written (not counting a batch being written)."""
        return len(self._rows)

    @property
    def full(self) -> bool:
        return len(self._rows) >= self.max_unstored

    def add(self, answer: Answer) -> None:
        self._rows.append((answer, None))
        if len(self._rows) >= BATCH_ROWS:
            self._wake.set()

    def add_finding(self, domain: str, catch_all: bool) -> None:
        """A domain's catch-all finding, stored (and retried) like the answers."""
        self._findings[domain] = catch_all

    async def run(self) -> None:
        """Write every TICK (or BATCH_ROWS answers): answers, catch-all findings, MX answers,
        and the behaviour every few seconds, so a long run keeps all of it as it goes. A
        database that refuses writes keeps everything for the next try; refusing for longer
        than DATABASE_OUTAGE_LIMIT stops the run. Ends when `finish` is called."""
        last_behavior = time.monotonic()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)
            self._wake.clear()
            try:
                if self._rows:
                    await self.flush_rows()
                await asyncio.to_thread(self.flush_others)
                if time.monotonic() - last_behavior >= BEHAVIOR_FLUSH_INTERVAL:
                    last_behavior = time.monotonic()
                    await asyncio.to_thread(self.ctx.flush_behavior)
            except StoreError as exc:
                self._refused(exc)
            else:
                self._writable()

    def _refused(self, exc: StoreError) -> None:
        """One clock for every write: said once when the database starts refusing, and the
        run stopped (one line naming the database) when it refuses for too long."""
        now = time.monotonic()
        limit = self.ctx.settings.database_outage_limit
        if self._refusing_since is None:
            self._refusing_since = now
            log.warning("database refuses writes; results are kept and retried for up to "
                        "%g s: %s", limit, exc)  # fmt: skip
        elif now - self._refusing_since >= limit and self._failure is None:
            refused = now - self._refusing_since
            self._failure = StoreError(f"{exc} (refused writes for {refused:.0f} s)")
            self._stored.set()
            if self.on_failure is not None:
                self.on_failure(self._failure)

    def _writable(self) -> None:
        if self._refusing_since is not None:
            log.warning(
                "database writable again after %.0f s", time.monotonic() - self._refusing_since
            )
            self._refusing_since = None

    def flush_others(self) -> None:
        """Catch-all findings and MX answers, each kept for the next try when refused."""
        findings, self._findings = self._findings, {}
        try:
            for domain, found in list(findings.items()):
                self.ctx.mx_cache.save_catch_all(domain, found)
                del findings[domain]
        finally:
            self._findings = {**findings, **self._findings}
        self.ctx.mx_cache.flush()

    async def finish(self, task: asyncio.Task[None]) -> None:
        """Stop `task` (this writer's `run`) and write everything left, retrying while the
        database refuses, up to DATABASE_OUTAGE_LIMIT; then raise StoreError."""
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(StoreError):  # raised again by the last flush below
            await task
        while True:
            try:
                await self.flush_rows()
                await asyncio.to_thread(self.flush_others)
                await asyncio.to_thread(self.ctx.flush_behavior)
                return
            except StoreError as exc:
                self._refused(exc)
                if self._failure is not None:
                    raise self._failure from exc
                await asyncio.sleep(FINAL_RETRY)

    async def flush_rows(self, final: bool = False) -> None:
        """Store the batched answers. A failing database keeps them for the next try; at
        the end of the run, or once too many wait, the failure is raised."""
        rows, self._rows = self._rows, []
        try:
            if rows:
                await asyncio.to_thread(self._store_batch, rows)
        except StoreError as exc:
            self._rows = rows + self._rows
            if final or self.full:
                self._failure = self._failure or exc
            raise
        finally:
            self._stored.set()

    async def room(self) -> None:
        """Backpressure: wait until the answers waiting for the database are below the
        bound (raise the database's failure if it gave up)."""
        while self.full:
            if self._failure is not None:
                raise self._failure
            self._stored.clear()
            self._wake.set()
            await self._stored.wait()

    def _store_batch(self, rows: list[Row]) -> None:
        """Store a batch. When the database refuses the batch but takes rows alone, a row it
        refuses alone is set aside with a logged reason, never blocking the rows beside it.
        When it takes none (locked, down, full), the failure is raised and nothing is lost."""
        try:
            self.store_answers(rows)
            return
        except StoreError:
            if len(rows) == 1:
                raise
        stored = 0
        refused: list[tuple[Row, StoreError]] = []
        for row in rows:
            try:
                self.store_answers([row])
                stored += 1
            except StoreError as exc:
                refused.append((row, exc))
                if stored == 0 and len(refused) >= GIVE_UP_AFTER:
                    raise  # the database, not a row, is the trouble: retry the batch later
        if stored == 0:
            raise refused[-1][1]
        for (answer, _), why in refused:
            log.error("result of %r set aside: the database refuses it: %s", answer.email[:80], why)
            self.set_aside += 1

    def _store_answers(self, rows: list[Row]) -> None:
        with self.ctx.store.session() as session:
            q.add_answers(session, rows)
