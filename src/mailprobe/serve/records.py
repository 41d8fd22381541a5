"""What the API answers with: an address's record (the CLI's, plus the evidence a single
check asks for) and the results file of a job (CSV keeping the uploaded columns, or JSONL)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from mailprobe.inputs import column_keys
from mailprobe.report import CSV_FIELDS, render_record
from mailprobe.results import Answer, LineAnswer

VERDICTS = ("deliverable", "undeliverable", "risky", "unknown")


def single_record(raw: str, answer: Answer, *, transcript: bool = False) -> dict[str, Any]:
    """One address's record: `verify`'s record (without its line number) and the evidence
    an HTTP caller cannot see otherwise (stage, DNS status, TLS, the transcript on request)."""
    record = render_record(LineAnswer(1, raw, answer))
    del record["line"]
    outcome = answer.outcome
    record.update(
        {
            "stage": outcome.stage,
            "dns_status": answer.dns_status,
            "tls": outcome.tls,
            "error": outcome.error,
        }
    )
    if transcript:
        record["transcript"] = list(outcome.transcript)
    return record


def header_key(header: str) -> str:
    """The key `mailprobe.inputs` gives a header's cells in InputLine.extra."""
    return header.strip().lstrip("\ufeff").lower()


class ResultsCSV:
    """The rows of a job's results CSV: the uploaded columns as they were, then ours.

    A result column whose name the upload already uses is prefixed `mailprobe_`."""

    def __init__(self, columns: Sequence[str], address_column: int | None) -> None:
        self.columns = list(columns)  # none: a plain list, the record's columns only
        self.keys = column_keys(self.columns)  # InputLine.extra's keys (headers as given)
        self.address_column = address_column
        taken = {header_key(c) for c in self.columns}
        self.ours = [f"mailprobe_{f}" if f in taken else f for f in CSV_FIELDS]

    def header(self) -> str:
        return self._line([*self.columns, *self.ours])

    def row(self, raw: str, extra: dict[str, Any], record: dict[str, Any]) -> str:
        cells = [
            raw if i == self.address_column else str(extra.get(key, ""))
            for i, key in enumerate(self.keys)
        ]
        flat = {**record, **record.get("flags", {})}
        ours = ["" if flat.get(f) is None else str(flat.get(f)) for f in CSV_FIELDS]
        return self._line([*cells, *ours])

    @staticmethod
    def _line(cells: Iterable[str]) -> str:
        out = io.StringIO()
        csv.writer(out).writerow(list(cells))
        return out.getvalue()


def jsonl(record: dict[str, Any], extra: dict[str, Any]) -> str:
    """A JSON line: the record, with the row's other uploaded cells under `columns`."""
    shown = {**record, "columns": extra} if extra else record
    return json.dumps(shown, ensure_ascii=False) + "\n"
