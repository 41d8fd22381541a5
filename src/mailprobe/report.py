"""Presenting verification records: JSON lines, CSV or a table (`verify`'s progress
display is the CLI's own: `cli.progress`).

Writers flush what they have at least every `flush_every` seconds (every record when
0): a reader can `tail -f` the output, and a killed run loses no more of it than of its
database writes, which go in batches on the same cadence (and are what `--resume` reads).
One flush per record was a write system call per record, a twentieth of a bulk run's CPU.
"""

from __future__ import annotations

import csv
import json
import time
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from mailprobe.results import LineAnswer

CSV_FIELDS = (
    "line", "email", "verdict", "reason", "category", "code", "enhanced_status", "message",
    "mx_host", "catch_all", "free", "disposable", "role", "attempts", "elapsed_ms", "reused",
)  # fmt: skip
# One encoder for every record: json.dumps(record, ensure_ascii=False) builds a new one
# (and its C scanner) per call, which was a good part of writing a record.
_JSON = json.JSONEncoder(ensure_ascii=False)
VERDICT_STYLE = {
    "deliverable": "green",
    "undeliverable": "red",
    "risky": "yellow",
    "unknown": "dim",
}


def render_record(line: LineAnswer) -> dict[str, Any]:
    """The one rendering of an input line's answer as an output record (JSON line, CSV row)."""
    a, o = line.answer, line.answer.outcome
    return {
        "line": line.line_no,
        "email": line.raw,
        "verdict": a.verdict.value,
        "reason": a.reason,
        "category": o.category,
        "code": o.code,
        "enhanced_status": o.enhanced_status,
        # A line refused before anything was sent has no reply: its message is why.
        "message": o.message or (o.error if o.stage == "input" else "") or "",
        "mx_host": o.mx_host,
        "catch_all": a.catch_all,
        "flags": a.flags.as_dict() if a.flags else {},
        "attempts": a.attempts,
        "elapsed_ms": o.elapsed_ms,
        "reused": a.reused,
    }


class RecordWriter:
    """Writes records in one of the formats; `close()` finishes a table.

    `headers`: the input table's header row. A CSV then starts with the input's own
    columns, as given and in their order (each record's `columns`), followed by the
    verdict columns (`appended_fields`): rows that can sit next to the user's sheet."""

    def __init__(
        self,
        out: TextIO,
        fmt: str,
        headers: list[str] | None = None,
        delimiter: str = ",",
        flush_every: float = 0.0,
    ) -> None:
        if fmt not in {"jsonl", "csv", "table"}:
            raise ValueError(f"unknown format {fmt!r}: use jsonl, csv or table")
        self.out, self.fmt = out, fmt
        self.flush_every, self._flushed, self._unflushed = flush_every, time.monotonic(), False
        self._rows: list[dict[str, Any]] = []
        self._csv: Any = None
        self._fields: tuple[str, ...] = CSV_FIELDS
        if fmt == "csv":
            self._csv = csv.writer(out, delimiter=delimiter)
            names = list(CSV_FIELDS)
            if headers is not None:
                self._fields = tuple(f for f in CSV_FIELDS if f != "email")
                names = [*headers, *appended_fields(headers, self._fields)]
            self._width = len(headers) if headers is not None else None
            self._csv.writerow(names)

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.out.write(_JSON.encode(record) + "\n")
        elif self.fmt == "csv":
            values = {**record, **record.get("flags", {})}
            row = [values.get(f) for f in self._fields]  # None: an empty cell
            if self._width is not None:
                cells = list((record.get("columns") or {}).values())[: self._width]
                row = [*cells, *[""] * (self._width - len(cells)), *row]
            self._csv.writerow(row)
        else:
            self._rows.append(record)
            return
        self._unflushed = True
        if self.flush_every <= 0 or time.monotonic() - self._flushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Flush what was written since the last flush (a closed pipe raises here)."""
        if self._unflushed:
            self._unflushed = False
            self._flushed = time.monotonic()
            self.out.flush()

    def close(self) -> None:
        if self.fmt != "table":
            return
        table = Table()
        for name in ("line", "email", "verdict", "reason", "code", "mx_host", "catch_all"):
            table.add_column(name, no_wrap=name in {"email", "verdict"})
        for r in sorted(self._rows, key=lambda r: int(r["line"])):
            table.add_row(
                str(r["line"]), r["email"],
                f"[{VERDICT_STYLE.get(r['verdict'], '')}]{r['verdict']}[/]", r["reason"],
                str(r["code"] or ""), r["mx_host"] or "", _yes_no(r["catch_all"]),
            )  # fmt: skip
        Console(file=self.out, width=160).print(table)


def appended_fields(headers: list[str], fields: tuple[str, ...]) -> list[str]:
    """The verdict columns' names after the input's: `mailprobe_` before one the input
    already has (its own `verdict` or `line` column stays its own)."""
    taken = {h.strip().lower() for h in headers}
    return [f"mailprobe_{f}" if f in taken else f for f in fields]


def _yes_no(value: bool | None) -> str:
    return "" if value is None else "yes" if value else "no"
