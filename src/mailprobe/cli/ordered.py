"""`verify`'s records in input order, each with its own row's columns.

The engine answers lines as their servers reply, so line 7 may be final long before
line 3 (greylisted, or on a slow server). By default the records still come out in
input order: an answered record waits in a bounded buffer until every line before it
has come out. The buffer counts the lines read and not yet written; when it holds
`window` of them, the reading thread waits (the engine probes what it already has)
until the oldest line is answered and written. Memory stays bounded, no record is
dropped or written twice; the price is that a line that waits long (a greylisting
retry: up to GREYLIST_MAX_DELAY) holds the output and, once the buffer is full, the
reading. `--unordered` writes each record as it is answered; the buffer then only
holds the columns of the lines in flight, which the engine bounds itself.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mailprobe.inputs import InputLine, Listing

ORDER_WINDOW = 10_000  # lines read and not yet written, in ordered mode (--order-buffer)
Record = dict[str, Any]


@dataclass(slots=True)
class _Slot:
    columns: dict[str, str] | None  # the row's cells under its headers (None: a plain list)
    record: Record | None = None  # the answer, once there


class InputOrder:
    """Between the input and the writer: lines registered as read (`lines`), records
    handed in as answered (`answered`), emitted in input order or as they come."""

    def __init__(
        self,
        listing: Listing,
        emit: Callable[[Record], None],
        *,
        ordered: bool = True,
        window: int = ORDER_WINDOW,
        bounded: bool = True,
    ) -> None:
        self.listing = listing
        self.emit = emit
        self.ordered = ordered
        self.window = max(1, window)
        # `bounded` False: the reader is never held (the fleet path reads and collects
        # answers on one thread, so holding it would wait for itself).
        self.bounded = bounded and ordered
        self._slots: dict[int, _Slot] = {}
        self._order: deque[int] = deque()  # line numbers not yet written, in input order
        self._cond = threading.Condition()
        self._closed = False
        self.most_held = 0  # the largest number of lines the buffer held (for benchmarks)

    def lines(self) -> Iterator[InputLine]:
        """The listing's lines, each registered before the engine sees it; while the
        buffer is full, the next line is not read."""
        keys = self.listing.keys
        for line in self.listing:
            columns = None
            if keys is not None:
                columns = dict(zip(keys, self.listing.cells(line), strict=True))
            with self._cond:
                while self.bounded and len(self._slots) >= self.window and not self._closed:
                    self._cond.wait(0.5)
                if self._closed:
                    return
                self._slots[line.line_no] = _Slot(columns)
                if self.ordered:
                    self._order.append(line.line_no)
                self.most_held = max(self.most_held, len(self._slots))
            yield line

    def answered(self, record: Record) -> None:
        """A line's record: written now (unordered, or it is the oldest line), or when
        the lines before it have been."""
        out: list[Record] = []
        with self._cond:
            line = int(record["line"])
            slot = self._slots.get(line)
            if slot is None:  # not registered (cannot happen): never lose it
                out.append(record)
            else:
                if slot.columns is not None:
                    record["columns"] = slot.columns
                if not self.ordered:
                    del self._slots[line]
                    out.append(record)
                else:
                    slot.record = record
                    out = self._ready()
            if out and self.bounded:  # (only a bounded reader ever waits)
                self._cond.notify_all()
        for r in out:
            self.emit(r)

    def _ready(self) -> list[Record]:
        out = []
        while self._order:
            slot = self._slots[self._order[0]]
            if slot.record is None:
                break
            del self._slots[self._order.popleft()]
            out.append(slot.record)
        return out

    def close(self) -> None:
        """The run is over (or stopped): the answered records still waiting for an
        earlier line are written, in order; a line never answered has no record here
        (the run's exit status says so). The reader, if held, lets go."""
        with self._cond:
            self._closed = True
            out = [s.record for n in self._order if (s := self._slots[n]).record is not None]
            self._order.clear()
            self._slots.clear()
            self._cond.notify_all()
        for r in out:
            self.emit(r)

    @property
    def held(self) -> int:
        """Lines read and not yet written."""
        return len(self._slots)
