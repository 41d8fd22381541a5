"""Reading address lists: one address a line, or a CSV with an `email` column, or stdin.

Every input line yields an entry, good or bad, with its line number, so callers
can report bad lines precisely and never lose one.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mailprobe.address import EmailAddress, InvalidAddress, parse_address
from mailprobe.config import get_settings

Allowed = Collection[str] | None  # special-use names allowed; None: the SPECIAL_USE_ALLOWED setting


@dataclass(frozen=True, slots=True)
class InputLine:
    line_no: int
    raw: str
    address: EmailAddress | None
    error: str | None
    extra: dict[str, str]  # the CSV row's other columns (name, source...)
    reason: str = "invalid_syntax"  # why `address` is None: invalid_syntax or reserved_domain


def _is_csv_header(first: str) -> bool:
    cells = [c.strip().lower() for c in next(csv.reader([first]), [])]
    return ("email" in cells and len(cells) > 1) or cells == ["email"]


def read_addresses(
    source: str | Path | TextIO, special_use_allowed: Allowed = None
) -> Iterator[InputLine]:
    """Yield every line of `source` ("-" is stdin) with its parsed address or its error."""
    allowed = _allowed(special_use_allowed)
    if isinstance(source, (str, Path)):
        if str(source) == "-":
            stdin = io.TextIOWrapper(sys.stdin.buffer, "utf-8-sig", newline="\n")
            yield from _read(stdin, allowed)
            return
        # Lines end at LF only: a lone CR inside a line stays there and gets the line
        # refused as a control character, instead of splitting it into two "addresses".
        with open(source, encoding="utf-8-sig", newline="\n") as fh:
            yield from _read(fh, allowed)
    else:
        yield from _read(source, allowed)


def _allowed(special_use_allowed: Allowed) -> Collection[str]:
    if special_use_allowed is None:
        return get_settings().special_use_allowed
    return special_use_allowed


def _read(fh: TextIO, allowed: Collection[str]) -> Iterator[InputLine]:
    first = fh.readline()
    if not first:
        return
    if _is_csv_header(first):
        reader = csv.DictReader(io.StringIO(first), skipinitialspace=True)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        rows = csv.reader(fh, skipinitialspace=True)
        for offset, row in enumerate(rows, start=2):
            cells = dict(zip(fields, (c.strip() for c in row), strict=False))
            yield entry(offset, cells.pop("email", ""), cells, allowed)
        return
    yield entry(1, first.rstrip("\r\n"), {}, allowed)
    for line_no, line in enumerate(fh, start=2):
        yield entry(line_no, line.rstrip("\r\n"), {}, allowed)


def entry(
    line_no: int, raw: str, extra: dict[str, str] | None = None, special_use_allowed: Allowed = None
) -> InputLine:
    """One input line, parsed: the address, or why it is not one (its syntax, or a
    special-use domain not in `special_use_allowed`)."""
    extra = extra or {}
    try:
        address = parse_address(raw, special_use_allowed=_allowed(special_use_allowed))
    except InvalidAddress as exc:
        return InputLine(line_no, raw, None, str(exc), extra, exc.reason)
    return InputLine(line_no, raw, address, None, extra)
