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

    async def run(self) -> None:
        """Write every TICK (or BATCH_ROWS answers), and the behaviour every few seconds,
        so a long run keeps both as it goes. Ends when `finish` is called."""
        last_behavior = time.monotonic()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)
            self._wake.clear()
            if self._rows:
                await self.flush_rows()
            await asyncio.to_thread(self.flush_mx_cache)
            if time.monotonic() - last_behavior >= BEHAVIOR_FLUSH_INTERVAL:
                last_behavior = time.monotonic()
                try:
                    await asyncio.to_thread(self.ctx.flush_behavior)
                except StoreError as exc:  # statistics: try again next time
                    log.warning("could not store MX behaviour yet: %s", exc)

    async def finish(self, task: asyncio.Task[None]) -> None:
        """Stop `task` (this writer's `run`) and write everything left; raise StoreError
        when the answers cannot be stored."""
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(StoreError):  # raised again by the last flush below
            await task
        await self.flush_rows(final=True)
        await asyncio.to_thread(self.flush_mx_cache)
        await asyncio.to_thread(self.ctx.flush_behavior)

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
                self._failure = exc
                raise
            log.warning("could not store %d results yet (will retry): %s", len(rows), exc)
        finally:
            self._stored.set()

    def flush_mx_cache(self) -> None:
        """Write the MX answers DNS gave since the last flush, in one transaction."""
        try:
            self.ctx.mx_cache.flush()
        except StoreError as exc:  # a cache: the next flush (or the next run) tries again
            log.warning("could not store MX answers yet: %s", exc)

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
