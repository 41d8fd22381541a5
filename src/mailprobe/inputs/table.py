"""Rows of a CSV (bounded, an unterminated quote caught) and of an .xlsx workbook."""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailprobe.inputs.decode import MAX_ROW, InputError, Line, shown

MAX_ROW_LINES = 100  # physical lines one quoted row may span (a long multi-line note)


@dataclass(frozen=True, slots=True)
class Row:
    """One record of the table: its cells, or why it has none."""

    line_no: int  # the physical line the row starts on
    cells: list[str] | None
    problem: str | None = None
    reason: str = "invalid_syntax"
    raw: str = ""  # a bounded prefix of the line, when the row could not be read
    guessed: str | None = None  # an encoding guessed for one of its lines


def csv_rows(
    lines: Iterator[Line], delimiter: str, width: int, address: int | None
) -> Iterator[Row]:
    """Each CSV row with the line it starts on.

    csv.reader alone would let an unterminated quote swallow the rest of the file into
    one field, silently; here a row that spans lines is checked (the file ended inside
    the quote, the row grew past MAX_ROW or MAX_ROW_LINES, or one of the lines it took is
    a complete row of its own with an address) and then answered alone as an unterminated
    quote, and the lines it took are read again as rows of their own."""
    pending: deque[Line] = deque()

    def pull() -> Line | None:
        return pending.popleft() if pending else next(lines, None)

    while (first := pull()) is not None:
        if first.problem:
            yield Row(first.number, None, first.problem, first.reason, first.text)
            continue
        taken = [first]
        cut = False

        def feed(first: Line = first, taken: list[Line] = taken) -> Iterator[str]:
            nonlocal cut
            yield first.text
            size = len(first.text)
            while (nxt := pull()) is not None:
                taken.append(nxt)
                size += len(nxt.text)
                if nxt.problem or size > MAX_ROW or len(taken) > MAX_ROW_LINES:
                    cut = True
                    return
                yield nxt.text
            cut = True  # the file ended inside a quoted field

        try:
            cells = next(csv.reader(feed(), delimiter=delimiter, skipinitialspace=True), [])
        except csv.Error as exc:
            yield Row(first.number, None, f"line {first.number}: {exc}", raw=shown(first.text))
            pending.extendleft(reversed(taken[1:]))
            continue
        if len(taken) > 1 and (cut or any(_whole_row(x.text, delimiter, width, address)
                                          for x in taken[1:])):  # fmt: skip
            yield Row(
                first.number,
                None,
                f"line {first.number}: a quoted field opened on this line is never closed; "
                "the row is not read, the lines after it are",
                raw=shown(first.text),
            )
            pending.extendleft(reversed(taken[1:]))
            continue
        guessed = next((x.guessed for x in taken if x.guessed), None)
        yield Row(first.number, cells, guessed=guessed)


def _whole_row(text: str, delimiter: str, width: int, address: int | None) -> bool:
    """A line taken into a quoted field that reads as a row of the table by itself."""
    if width < 2 or address is None:
        return False
    try:
        cells = next(csv.reader([text], delimiter=delimiter, skipinitialspace=True), [])
    except csv.Error:
        return False
    return len(cells) == width and "@" in cells[address]


def xlsx_rows(path: str | Path) -> Iterator[Row]:
    """The first sheet's rows (openpyxl, read-only: rows stream, the sheet is not loaded)."""
    try:
        import openpyxl
    except ImportError:
        raise InputError(
            f"{path}: reading .xlsx needs the xlsx extra: pip install 'mailprobe[xlsx]'"
        ) from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile, KeyError, ValueError... alike
        raise InputError(f"{path}: not a readable .xlsx workbook: {exc}") from None
    try:
        if not book.worksheets:
            return
        for number, values in enumerate(book.worksheets[0].iter_rows(values_only=True), 1):
            yield Row(number, ["" if v is None else str(v) for v in values])
    finally:
        book.close()
