"""Reading address lists: one address a line, or a CSV with an `email` column, or stdin.

Every input line yields an entry, good or bad, with its line number, so callers
can report bad lines precisely and never lose one.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mailprobe.address import EmailAddress, InvalidAddress, parse_address


@dataclass(frozen=True, slots=True)
class InputLine:
    line_no: int
    raw: str
    address: EmailAddress | None
    error: str | None
    extra: dict[str, str]  # the CSV row's other columns (name, source...)


def _is_csv_header(first: str) -> bool:
    cells = [c.strip().lower() for c in next(csv.reader([first]), [])]
    return ("email" in cells and len(cells) > 1) or cells == ["email"]


def read_addresses(source: str | Path | TextIO) -> Iterator[InputLine]:
    """Yield every line of `source` ("-" is stdin) with its parsed address or its error."""
    if isinstance(source, (str, Path)):
        if str(source) == "-":
            yield from _read(io.TextIOWrapper(sys.stdin.buffer, "utf-8-sig", newline="\n"))
            return
        # Lines end at LF only: a lone CR inside a line stays there and gets the line
        # refused as a control character, instead of splitting it into two "addresses".
        with open(source, encoding="utf-8-sig", newline="\n") as fh:
            yield from _read(fh)
    else:
        yield from _read(source)


def _read(fh: TextIO) -> Iterator[InputLine]:
    first = fh.readline()
    if not first:
        return
    if _is_csv_header(first):
        reader = csv.DictReader(io.StringIO(first), skipinitialspace=True)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        rows = csv.reader(fh, skipinitialspace=True)
        for offset, row in enumerate(rows, start=2):
            cells = dict(zip(fields, (c.strip() for c in row), strict=False))
            yield entry(offset, cells.pop("email", ""), cells)
        return
    yield entry(1, first.rstrip("\r\n"), {})
    for line_no, line in enumerate(fh, start=2):
        yield entry(line_no, line.rstrip("\r\n"), {})


def entry(line_no: int, raw: str, extra: dict[str, str] | None = None) -> InputLine:
    """One input line, parsed: the address, or why it is not one."""
    extra = extra or {}
    try:
        return InputLine(line_no, raw, parse_address(raw), None, extra)
    except InvalidAddress as exc:
        return InputLine(line_no, raw, None, str(exc), extra)
