"""The input side of a run: lines read ahead in a thread, taken in chunks, admitted.

Admission turns each good line into a `Target` and answers the ones a stored answer
may stand for: those are read back with `queries.answer_from_row`, the one reading of
a row, so the stored verdict and shown reason stand whoever wrote them. The rest go to
routing. Which stored answers stand (`reuse_window`):

- a final verdict (deliverable, undeliverable, risky) younger than --reuse-ttl, or
  stored since the start of the run being resumed (--resume);
- an `unknown` only while younger than --reuse-unknown-ttl (REUSE_UNKNOWN_TTL, minutes),
  also on --resume: an unknown is not finished work (DNS failed, a server timed out),
  so resuming asks again once its short TTL is over, rather than carrying the
  interrupted run's failures forward. Nothing temporary is remembered as final.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from mailprobe.engine.bulk.options import BulkOptions
from mailprobe.engine.bulk.targets import Target
from mailprobe.engine.context import Context
from mailprobe.inputs import InputLine
from mailprobe.results import Answer
from mailprobe.store import queries as q
from mailprobe.store.models import utcnow

READ_CHUNK = 200  # input lines the engine takes from the reader thread at a time
REMEMBERED_ANSWERS = 10_000  # answered addresses kept for their later duplicates (~0.6 KB each)
READ_AHEAD = 2000  # lines the reader thread may parse ahead of the engine
READ_PAUSE = 0.05  # seconds of admitting lines before the loop serves everything else

Lines = Iterable[InputLine] | AsyncIterator[InputLine]


class Duplicates:
    """Lines of one run that ask the same mailbox: probed once, answered for every line.

    The same mailbox is the same RCPT TO: the address's wire form (`EmailAddress.wire`),
    whose domain is case-folded and IDNA-encoded while its local part keeps its case: RFC
    5321 section 2.4 lets a server treat local parts as case-sensitive, so `Jane@` and
    `jane@` may be two mailboxes and are asked as two. A later line whose mailbox is in
    flight waits for that answer (`follow`); one whose mailbox was answered in this run
    gets that answer (`answered`; the last REMEMBERED_ANSWERS are kept). Each line is its
    own record with its own number and text."""

    def __init__(self, remembered: int = REMEMBERED_ANSWERS) -> None:
        self._asking: dict[str, int] = {}  # mailbox -> its first line, in flight
        self._first: dict[int, str] = {}  # that line -> its mailbox
        self._copies: dict[int, list[tuple[int, str]]] = {}  # first line -> later lines
        self._answers: OrderedDict[str, Answer] = OrderedDict()
        self._remembered = remembered
        self.waiting = 0  # later lines waiting for their first line's answer

    def asked(self, key: str, line_no: int) -> None:
        """`line_no` is the first line asking this mailbox."""
        self._asking[key] = line_no
        self._first[line_no] = key

    def follow(self, key: str, line_no: int, raw: str) -> bool:
        """Whether the mailbox is in flight: then the line waits for its answer."""
        first = self._asking.get(key)
        if first is None:
            return False
        self._copies.setdefault(first, []).append((line_no, raw))
        self.waiting += 1
        return True

    def answered(self, key: str) -> Answer | None:
        return self._answers.get(key)

    def done(self, line_no: int, answer: Answer) -> list[tuple[int, str]]:
        """The line's answer is out: the later lines that wait for it."""
        key = self._first.pop(line_no, None)
        if key is None:
            return []
        del self._asking[key]
        if answer.reason != "pending_retry":  # not an answer: a later line asks again
            self._answers[key] = answer
            self._answers.move_to_end(key)
            if len(self._answers) > self._remembered:
                self._answers.popitem(last=False)
        copies = self._copies.pop(line_no, [])
        self.waiting -= len(copies)
        return copies

    def copies_of(self, line_nos: Iterable[int]) -> int:
        """How many later lines wait for these first lines."""
        return sum(len(self._copies.get(n, ())) for n in line_nos)


class Admitting(Protocol):
    """What the reader hands lines to (the conductor)."""

    duplicates: Duplicates

    async def line_coming(self) -> None:
        """Wait for room (stored answers, in-flight targets), then count the line in."""

    async def answer_invalid(self, line: InputLine) -> None: ...

    async def answer_copy(self, line: InputLine, answer: Answer) -> None:
        """Answer a line with the answer its mailbox already got in this run."""

    async def answer_reused(self, target: Target, answer: Answer) -> None: ...

    def admit(self, target: Target) -> None: ...


async def read(lines: Lines, into: Admitting, ctx: Context, options: BulkOptions) -> None:
    """Admit every line, in batches (one store look-up each), never holding so many
    in-flight slots in a batch that the next line could wait for them forever, and
    never sitting on lines that came in while the input is slow to deliver more."""
    batch_size = max(1, min(200, options.max_in_flight // 2))
    dups = into.duplicates
    async for chunk in chunks(lines):
        batch: list[Target] = []
        held = 0  # lines holding a slot for this batch: its targets and their duplicates
        for line in chunk:
            await into.line_coming()
            if line.address is None:
                await into.answer_invalid(line)
                continue
            key = line.address.wire
            if dups.follow(key, line.line_no, line.raw):
                held += 1
            elif (answer := dups.answered(key)) is not None:
                await into.answer_copy(line, answer)
                continue
            else:
                dups.asked(key, line.line_no)
                batch.append(Target(line.address, line_no=line.line_no, raw=line.raw))
                held += 1
            if held >= batch_size:
                await _admit(batch, into, ctx, options)
                batch, held = [], 0
        await _admit(batch, into, ctx, options)


async def _admit(batch: list[Target], into: Admitting, ctx: Context, options: BulkOptions) -> None:
    """Answer targets from stored answers where allowed; route the rest."""
    if not batch:
        return
    emails = [t.address.normalized for t in batch]
    window = reuse_window(options, ctx.settings.reuse_unknown_ttl, utcnow())
    stored = await asyncio.to_thread(stored_answers, ctx, emails, window) if window else {}
    for target in batch:
        answer = stored.get(target.address.normalized)
        if answer is not None:
            await into.answer_reused(target, answer)
        else:
            into.admit(target)


@dataclass(frozen=True, slots=True)
class ReuseWindow:
    """Since when stored answers may stand: final verdicts, and unknowns (None: never)."""

    final_after: datetime
    unknown_after: datetime | None


def reuse_window(
    options: BulkOptions, unknown_ttl_default: float, now: datetime
) -> ReuseWindow | None:
    """Which stored answers may stand for a new probe (None: probe everything)."""
    cutoffs = []
    if options.reuse_ttl is not None:
        cutoffs.append(now - timedelta(seconds=options.reuse_ttl))
    if options.reuse_since is not None:
        cutoffs.append(options.reuse_since)
    if not cutoffs:
        return None
    unknown_ttl = options.reuse_unknown_ttl
    if unknown_ttl is None:
        unknown_ttl = unknown_ttl_default
    if options.reuse_ttl is not None:
        unknown_ttl = min(unknown_ttl, options.reuse_ttl)  # never longer than a final one
    unknown_after = now - timedelta(seconds=unknown_ttl) if unknown_ttl > 0 else None
    return ReuseWindow(min(cutoffs), unknown_after)


def stored_answers(ctx: Context, emails: list[str], window: ReuseWindow) -> dict[str, Answer]:
    """Each address's stored answer that may stand (reused=True), see `reuse_window`."""
    with ctx.store.session() as session:
        rows = q.reusable_results(session, emails, window.final_after, window.unknown_after)
        return {email: q.answer_from_row(row) for email, row in rows.items()}


async def chunks(lines: Lines) -> AsyncIterator[list[InputLine]]:
    if isinstance(lines, AsyncIterator):
        async for line in lines:
            yield [line]
        return
    async for chunk in read_ahead(lines):
        yield chunk


async def read_ahead(
    lines: Iterable[InputLine], chunk: int = READ_CHUNK, ahead: int = READ_AHEAD
) -> AsyncIterator[list[InputLine]]:
    """Read and parse `lines` in a thread of their own; yield what has come, in chunks.

    A plain iterator would run on the event loop: a stdin that is slow to write would
    stall every session in flight (and a server drops a silent client), and parsing a
    big file would delay the first sessions. A daemon thread, rather than
    asyncio.to_thread, because a read blocked on stdin must not keep the process
    alive after Ctrl-C. The engine takes whatever lines are there whenever it asks, so
    a line that comes before a pause (a slow pipe, a person typing) is probed at once;
    at most `ahead` lines wait unread, so memory stays bounded.
    """
    loop = asyncio.get_running_loop()
    buffer: deque[InputLine | _EndOfInput] = deque()  # appends and pops are thread-safe
    room = threading.Semaphore(ahead)
    stop = threading.Event()
    wake = asyncio.Event()
    asleep = [False]  # the engine waits for a line: the reader must wake it

    def put(item: InputLine | _EndOfInput) -> None:
        buffer.append(item)
        if asleep[0]:
            asleep[0] = False
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody reads
                loop.call_soon_threadsafe(wake.set)

    def produce() -> None:
        try:
            for line in lines:
                while not room.acquire(timeout=0.5):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                put(line)
            put(_EndOfInput(None))
        except BaseException as exc:  # re-raised in the reading task, where it belongs
            put(_EndOfInput(exc))

    threading.Thread(target=produce, name="mailprobe-reader", daemon=True).start()
    last_pause = time.monotonic()
    try:
        while True:
            if not buffer:
                wake.clear()
                asleep[0] = True
                if not buffer:  # looked again after saying so: no wake-up can be missed
                    await wake.wait()
                asleep[0] = False
            taken: list[InputLine] = []
            end: _EndOfInput | None = None
            while buffer and len(taken) < chunk:
                item = buffer.popleft()
                if isinstance(item, _EndOfInput):
                    end = item
                    break
                taken.append(item)
            if taken:
                room.release(len(taken))
                yield taken
                if time.monotonic() - last_pause >= READ_PAUSE:  # replies and lookups too
                    await asyncio.sleep(0)
                    last_pause = time.monotonic()
            if end is not None:
                if end.error is not None:
                    raise end.error
                return
    finally:
        stop.set()


@dataclass(frozen=True, slots=True)
class _EndOfInput:
    error: BaseException | None  # why the input ended early, if it did
