"""Reading address lists: a text list (one address a line), a CSV or TSV export with a
header row, an .xlsx workbook (the xlsx extra), or stdin.

Every input line (every row of a table) yields an entry, good or bad, with its line
number, so callers can report bad lines precisely and never lose one. What cannot be
read as a list at all (a binary file, a table with no address column) raises
`InputError` before the first entry: one line for the user, never a record per row.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from mailprobe.address import EmailAddress, InvalidAddress, parse_address, reject_control_chars
from mailprobe.config import get_settings
from mailprobe.inputs.decode import (
    DETECT_SAMPLE,
    HEAD,
    MAX_ROW,
    ByteLines,
    Decoder,
    InputError,
    Line,
    Prefixed,
    TextAsBytes,
    check_text,
    file_encoding,
    physical_lines,
    shown,
)
from mailprobe.inputs.pasted import unwrap
from mailprobe.inputs.sniff import Shape, address_column, chosen_column, seen, sniff, split
from mailprobe.inputs.table import Row, csv_rows, xlsx_rows

__all__ = [
    "Allowed",
    "InputError",
    "InputLine",
    "Listing",
    "entry",
    "has_header_row",
    "read_addresses",
]

Allowed = Collection[str] | None  # special-use names allowed; None: the SPECIAL_USE_ALLOWED setting
MAX_ADDRESS_TEXT = 1024  # an address (254 octets) with a display name and spaces around it
SNIFF_LINES = 20


@dataclass(frozen=True, slots=True)
class InputLine:
    line_no: int
    raw: str  # the line or cell as given (a bounded prefix when it cannot be an address)
    address: EmailAddress | None
    error: str | None
    extra: dict[str, str]  # the row's other columns, keyed as `Listing.keys` (headers as given)
    reason: str = "invalid_syntax"  # why `address` is None: invalid_syntax, reserved_domain
    # or invalid_encoding


class Listing(Iterator[InputLine]):
    """The entries of one input, with the table's columns when it is a table.

    `headers`: the header row as given (spelling, case and order kept, a BOM dropped), or
    `column 1`... for a table without one; None for a plain list. `keys`: the same names
    made unique (a second `Email` is `Email (2)`), the keys of `InputLine.extra`.
    `address`: the index of the address column. Together they give each row back as the
    user's sheet had it (`cells`), for output that can sit next to it. `delimiter` is the
    table's; `spreadsheet`: the file looks saved by a spreadsheet (a UTF-8 BOM, or a
    legacy code page), whose CSV output should then carry a BOM to open right there."""

    def __init__(
        self,
        entries: Iterator[InputLine],
        headers: list[str] | None = None,
        address: int | None = None,
    ) -> None:
        self._entries = entries
        self.headers = [h.lstrip("\ufeff") for h in headers] if headers is not None else None
        self.keys = column_keys(self.headers) if self.headers is not None else None
        self.address = address
        self.delimiter = ","
        self.spreadsheet = False

    def __next__(self) -> InputLine:
        return next(self._entries)

    def __iter__(self) -> Listing:
        return self

    def close(self) -> None:
        close = getattr(self._entries, "close", None)
        if close is not None:
            close()

    def cells(self, line: InputLine) -> list[str]:
        """The line's row in column order: the address cell as given, the others from
        `extra` ("" where the row was short); [] for a plain list."""
        if self.keys is None:
            return []
        return [
            line.raw if i == self.address else line.extra.get(key, "")
            for i, key in enumerate(self.keys)
        ]


def column_keys(headers: list[str]) -> list[str]:
    """Unique, non-empty names for the columns: a blank header is `column N`, a repeated
    one gets its ordinal (`Email (2)`)."""
    keys: list[str] = []
    taken: set[str] = set()
    for i, header in enumerate(headers):
        key = header if header.strip() else f"column {i + 1}"
        n = 1
        while key in taken:
            n += 1
            key = f"{header} ({n})"
        taken.add(key)
        keys.append(key)
    return keys


def read_addresses(
    source: str | Path | TextIO, special_use_allowed: Allowed = None, *, column: str | None = None
) -> Listing:
    """Every line of `source` ("-" is stdin) with its parsed address or its error.

    The file is opened and its shape found now (so InputError comes before any entry);
    the lines are read as the iterator is. `column` (`--column NAME|NUMBER`) names the
    address column instead of the header search. The `Listing` says the table's columns."""
    allowed = _allowed(special_use_allowed)
    if isinstance(source, (str, Path)) and str(source) != "-":
        name = str(source)
        if name.lower().endswith((".xlsx", ".xlsm")):
            return _from_rows(xlsx_rows(source), None, column, allowed, name)
        fh: BinaryIO = open(source, "rb")  # noqa: SIM115 (closed by the generator)
        try:
            return _read(fh, fh, name, column, allowed)
        except BaseException:
            fh.close()
            raise
    if isinstance(source, (str, Path)):
        return _read(sys.stdin.buffer, None, "stdin", column, allowed)
    return _read(TextAsBytes(source), None, "input", column, allowed)


def has_header_row(path: str | Path) -> bool:
    """Whether the file's first line is a table's header (no record): for a progress total."""
    with open(path, "rb") as fh:
        lines = physical_lines(Prefixed(b"", fh), Decoder())
        sample = [x.text for x, _ in zip(lines, range(SNIFF_LINES), strict=False)]
    return sniff(sample).headers is not None


def _allowed(special_use_allowed: Allowed) -> Collection[str]:
    if special_use_allowed is None:
        return get_settings().special_use_allowed
    return special_use_allowed


def _read(
    src: ByteLines | BinaryIO,
    owned: BinaryIO | None,
    name: str,
    column: str | None,
    allowed: Collection[str],
) -> Listing:
    # A pipe gives what it has (read1): a slow producer is not waited on for 8000 bytes.
    read = getattr(src, "read1", None) if owned is None else None
    head = read(HEAD) if read is not None else src.read(HEAD)  # type: ignore[union-attr]
    check_text(head, name)
    stream: ByteLines = Prefixed(head, src)
    encoding = None
    if owned is not None and owned.seekable():  # a file: the detector gets a large sample
        owned.seek(0)
        encoding = file_encoding(owned.read(DETECT_SAMPLE))
        owned.seek(len(head))
    lines = physical_lines(stream, Decoder(encoding))
    sample: list[Line] = []
    size = 0
    while len(sample) < SNIFF_LINES and size < MAX_ROW and (line := next(lines, None)):
        sample.append(line)
        size += len(line.text)
    shape = sniff(["" if x.problem else x.text for x in sample])
    replay = _chain(sample, lines)
    if shape.delimiter is None and (shape.headers is None or column is None):
        if shape.headers is not None:  # a one-column table: "email" then addresses
            return _close_after(_from_rows(_single(replay), shape, column, allowed, name), owned)
        if column is not None and not column.strip().isdigit():
            raise InputError(f"--column {column!r}: {name} has no header row")
        return _close_after(Listing(_plain(replay, allowed)), owned)
    if shape.headers is not None:
        next(replay)  # the header line itself
    width = len(shape.headers) if shape.headers else 0
    index = _column(shape.headers, column, name, sample, shape)
    rows = csv_rows(replay, shape.delimiter or ",", width, index)
    headers = shape.headers or _numbered(_first_cells(sample, shape.delimiter or ","))
    listing = _cells(rows, headers, index, allowed)
    listing.delimiter = shape.delimiter or ","
    listing.spreadsheet = head.startswith(codecs.BOM_UTF8) or encoding is not None
    return _close_after(listing, owned)


def _first_cells(sample: list[Line], delimiter: str) -> list[str]:
    first = next((x.text for x in sample if not x.problem and x.text.strip()), "")
    return split(first.rstrip("\r\n"), delimiter)


def _numbered(cells: list[str]) -> list[str]:
    """Names for the columns of a table without a header row."""
    return [f"column {i + 1}" for i in range(len(cells))]


def _chain(first: list[Line], rest: Iterator[Line]) -> Iterator[Line]:
    yield from first
    yield from rest


def _close_after(listing: Listing, owned: BinaryIO | None) -> Listing:
    """The listing, closing `owned` when it has been read (or dropped)."""

    def entries(inner: Iterator[InputLine]) -> Iterator[InputLine]:
        try:
            yield from inner
        finally:
            if owned is not None:
                owned.close()

    listing._entries = entries(listing._entries)
    return listing


def _single(lines: Iterator[Line]) -> Iterator[Row]:
    for line in lines:
        if line.problem:
            yield Row(line.number, None, line.problem, line.reason, line.text)
        else:
            yield Row(line.number, [line.text.rstrip("\r\n")], guessed=line.guessed)


def _column(
    headers: list[str] | None, column: str | None, name: str, sample: list[Line], shape: Shape
) -> int:
    if column is not None:
        return chosen_column(headers, column)
    if headers is not None:
        index = address_column(headers)
        if index is None:
            raise InputError(
                f"{name}: no address column among the headers {seen(headers)}; "
                "name it with --column NAME|NUMBER"
            )
        return index
    # No header row: the first cell that holds an @ in the first data line.
    delimiter = shape.delimiter or ","
    first = next((x.text for x in sample if not x.problem and x.text.strip()), "")
    cells = split(first, delimiter)
    return next((i for i, cell in enumerate(cells) if "@" in cell), 0)


def _from_rows(
    rows: Iterator[Row],
    shape: Shape | None,
    column: str | None,
    allowed: Collection[str],
    name: str,
) -> Listing:
    """Rows whose first row is a header (an .xlsx sheet, a one-column CSV)."""
    first = next(rows, None)
    if first is None:
        return Listing(iter(()))
    headers = first.cells or []
    if column is not None:
        index = chosen_column(headers, column)
        if column.strip().isdigit() and any("@" in h for h in headers):
            return _cells(_chain_rows(first, rows), _numbered(headers), index, allowed)
        return _cells(rows, headers, index, allowed)
    found = address_column(headers)
    if found is None:
        if len([h for h in headers if h.strip()]) == 1 and any("@" in h for h in headers):
            index = next(i for i, h in enumerate(headers) if h.strip())
            return _cells(_chain_rows(first, rows), _numbered(headers), index, allowed)
        raise InputError(
            f"{name}: no address column among the headers {seen(headers)}; "
            "name it with --column NAME|NUMBER"
        )
    return _cells(rows, headers, found, allowed)


def _chain_rows(first: Row, rest: Iterator[Row]) -> Iterator[Row]:
    yield first
    yield from rest


def _cells(
    rows: Iterator[Row], headers: list[str], index: int, allowed: Collection[str]
) -> Listing:
    """A table's entries; each row's other cells kept under its column's header as given
    (cells past the header row's width as `column N`)."""
    listing = Listing(iter(()), headers, index)
    keys = listing.keys or []

    def entries() -> Iterator[InputLine]:
        for row in rows:
            if row.cells is None:
                yield InputLine(row.line_no, row.raw, None, row.problem, {}, row.reason)
                continue
            raw = row.cells[index] if index < len(row.cells) else ""
            extra = {
                keys[i] if i < len(keys) else f"column {i + 1}": cell
                for i, cell in enumerate(row.cells)
                if i != index
            }
            yield _guarded(row.line_no, raw, extra, allowed, row.guessed)

    listing._entries = entries()
    return listing


def _plain(lines: Iterator[Line], allowed: Collection[str]) -> Iterator[InputLine]:
    for line in lines:
        if line.problem:
            yield InputLine(line.number, line.text, None, line.problem, {}, line.reason)
        else:
            yield _guarded(line.number, line.text.rstrip("\r\n"), {}, allowed, line.guessed)


def _guarded(
    line_no: int, raw: str, extra: dict[str, str], allowed: Collection[str], guessed: str | None
) -> InputLine:
    """An entry, unless its address text was read by a per-line encoding guess: a guess
    on one short line is often wrong (josé read as cp1006), and a misread mailbox name
    would be probed as if it were the user's."""
    if guessed and not raw.isascii():
        return InputLine(
            line_no,
            shown(raw),
            None,
            f"line {line_no} is not UTF-8 and its address is not ASCII: read as {guessed} "
            "by a guess that may be wrong; not probed",
            extra,
            "invalid_encoding",
        )
    return entry(line_no, raw, extra, allowed)


def entry(
    line_no: int, raw: str, extra: dict[str, str] | None = None, special_use_allowed: Allowed = None
) -> InputLine:
    """One input line, parsed: the address, or why it is not one (its syntax, or a
    special-use domain not in `special_use_allowed`). A pasted form (`"Jane" <jane@x>`,
    `mailto:`, a trailing `;`) is read as the address inside; `raw` stays as given."""
    extra = extra or {}
    allowed = _allowed(special_use_allowed)
    if len(raw) > MAX_ADDRESS_TEXT:
        error = f"{len(raw)} characters: longer than an address can be (RFC 5321: 254 octets)"
        return InputLine(line_no, shown(raw), None, error, extra)
    try:
        address = parse_address(raw, special_use_allowed=allowed)
    except InvalidAddress as exc:
        inner = _pasted(raw)
        if inner is None:
            return InputLine(line_no, raw, None, str(exc), extra, exc.reason)
        try:
            address = parse_address(inner, special_use_allowed=allowed)
        except InvalidAddress as inner_exc:
            return InputLine(line_no, raw, None, str(inner_exc), extra, inner_exc.reason)
    return InputLine(line_no, raw, address, None, extra)


def _pasted(raw: str) -> str | None:
    """The address inside a pasted form, or None: no form, or a control character (never
    unwrapped: the guard against command injection stays whole)."""
    try:
        reject_control_chars(raw, "address")
    except InvalidAddress:
        return None
    inner = unwrap(raw)
    return inner if inner != raw.strip() else None
