"""`mailprobe results`: stored answers read back, rendered like `verify`'s records.

Rows are read with `store.queries.answer_from_row` and rendered by
`report.render_record`, so a record read back has the same fields as the one
`verify` wrote. Stored rows do not know which run or file asked for them, so
`--input` selects the addresses of a file (one record per input line, in input order).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from mailprobe.cli.common import app, fail, settings
from mailprobe.verdict import Verdict

if TYPE_CHECKING:
    from mailprobe.results import LineAnswer
    from mailprobe.store import Store

CHUNK = 500  # addresses per query when selecting by input file


class ReadFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


def _since(value: str | None) -> datetime | None:
    """ "2026-11-24" or an ISO date-time; a time without zone is UTC, like the stored ones."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"--since {value!r}: give a date like 2026-11-24 or 2026-11-24T08:00") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@app.command()
def results(
    domain: Annotated[
        str | None, typer.Option("--domain", "-d", help="Only addresses at this domain.")
    ] = None,
    verdict: Annotated[Verdict | None, typer.Option("--verdict", help="Only this verdict.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only results stored since (date, UTC).")
    ] = None,
    input_path: Annotated[
        str | None,
        typer.Option("--input", "-i", help="Only the addresses of this list (as verify reads it)."),
    ] = None,
    fmt: Annotated[
        ReadFormat, typer.Option("--format", "-f", help="Output format.")
    ] = ReadFormat.jsonl,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write records here (default stdout).")
    ] = None,
) -> None:
    """Read stored results back: each address's newest answer, as CSV or JSON lines."""
    from mailprobe.report import RecordWriter, render_record
    from mailprobe.results import LineAnswer
    from mailprobe.store import StoreError, open_store
    from mailprobe.store.queries import answer_from_row, latest_results

    current = settings()
    when = _since(since)
    if input_path is not None and input_path != "-" and not _readable(input_path):
        raise fail(f"cannot read {input_path}: not a readable file")
    try:
        out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror or exc}") from None
    writer = RecordWriter(out, fmt.value)

    def answers() -> Iterator[LineAnswer]:
        store = open_store(current.database_url)
        if input_path is None:
            with store.session() as session:
                rows = latest_results(session, domain=domain, since=when)
                for n, row in enumerate(rows, start=1):
                    yield LineAnswer(n, row.email, answer_from_row(row))
            return
        yield from _for_input(input_path, store, domain, when)

    written = 0
    try:
        for line in answers():
            if verdict is None or line.answer.verdict is verdict:
                writer.write(render_record(line))
                written += 1
    except StoreError as exc:
        raise fail(f"database error: {exc}") from None
    except OSError as exc:
        raise fail(f"cannot read {input_path}: {exc.strerror or exc}") from None
    finally:
        writer.close()
        if output:
            out.close()
    typer.echo(f"mailprobe: {written} stored results", err=True)


def _readable(path: str) -> bool:
    import os

    return os.path.isfile(path) and os.access(path, os.R_OK)


def _for_input(
    path: str, store: Store, domain: str | None, since: datetime | None
) -> Iterator[LineAnswer]:
    """One answer per line of `path` with a stored result, in input order (read in chunks)."""
    from mailprobe.inputs import read_addresses
    from mailprobe.results import LineAnswer
    from mailprobe.store.queries import answer_from_row, latest_results

    chunk: list[tuple[int, str, str]] = []

    def flush() -> Iterator[LineAnswer]:
        with store.session() as session:
            found = {
                row.email: row
                for row in latest_results(
                    session, domain=domain, since=since, emails={e for _, _, e in chunk}
                )
            }
        for line_no, raw, email in chunk:
            if email in found:
                yield LineAnswer(line_no, raw, answer_from_row(found[email]))
        chunk.clear()

    for line in read_addresses(path):
        if line.address is not None:
            chunk.append((line.line_no, line.raw, line.address.normalized))
        if len(chunk) >= CHUNK:
            yield from flush()
    if chunk:
        yield from flush()
