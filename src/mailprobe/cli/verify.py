"""`mailprobe ingest` and `mailprobe verify`: lists of addresses, read and answered.

`verify` hands the input to the bulk engine and writes one record per line; its exit
status says whether every line got a final answer (common.VerifyExit).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from mailprobe.cli.common import PORT, VERIFY_EXIT_HELP, VerifyExit, app, seconds
from mailprobe.cli.common import fail as _fail
from mailprobe.cli.common import settings as _settings
from mailprobe.cli.egress import NO_SMTP_OPTION, PROXY_OPTION, check_port25, with_egress
from mailprobe.cli.ordered import ORDER_WINDOW, InputOrder
from mailprobe.config import Settings
from mailprobe.smtp_wire import use_fast_event_loop

if TYPE_CHECKING:
    from mailprobe.engine.bulk import BulkOptions, Summary
    from mailprobe.engine.bulk.status import RunStatus
    from mailprobe.inputs import InputLine
    from mailprobe.results import LineAnswer

T = TypeVar("T")
STATUS_EVERY = 0.25  # seconds between looks at the run's status for the progress display
FLUSH_EVERY = 0.2  # seconds between flushes of the records (the database's batch cadence)
COLUMN_OPTION = typer.Option("--column", help="Address column: header name or number.")


@app.command()
def ingest(
    path: Annotated[
        str,
        typer.Argument(help="Text file (one address a line), CSV with an 'email' column, or -."),
    ],
    probe: Annotated[
        bool,
        typer.Option("--probe", help="Queue a probe per new address (run here without Redis)."),
    ] = False,
    column: Annotated[str | None, COLUMN_OPTION] = None,
) -> None:
    """Store the addresses of a list; bad lines are reported by number, good ones kept."""
    from mailprobe.inputs import InputError
    from mailprobe.queue import QueueUnavailable
    from mailprobe.queue import ingest as run_ingest
    from mailprobe.store import StoreError

    settings = _settings()

    try:
        name = None if path == "-" else path
        report = run_ingest(path, enqueue_probe=probe, source_name=name, column=column)
    except InputError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc}") from None
    except StoreError as exc:
        raise _fail(f"database error: {exc}") from None
    except QueueUnavailable as exc:
        raise _fail(f"{exc}; the addresses are stored, run again to queue them") from None
    for line_no, raw, why in report.bad:
        typer.echo(f"{path}:{line_no}: skipped {raw!r}: {why}", err=True)
    typer.echo(
        f"added {report.added}, already present {report.existing}, "
        f"bad lines {len(report.bad)}, probes queued {report.enqueued}"
        + (f", freemail not queued {report.skipped_freemail}" if report.skipped_freemail else "")
    )
    if probe and report.enqueued and settings.redis_url is None:
        from mailprobe.queue import run_queued

        results = run_queued()
        typer.echo(f"probed {len(results)} queued addresses in this process")


class Format(StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    table = "table"


@app.command(epilog=VERIFY_EXIT_HELP)
def verify(
    input_path: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="One address a line, a CSV/TSV or .xlsx export (its address column found "
            "by header, or --column), or - for stdin.",
        ),
    ],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.jsonl,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write records here (default stdout).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Probe again even if a fresh result is stored.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run of this input.")
    ] = False,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="Do not wait for greylisting retries; leave them pending for --resume.",
        ),
    ] = False,
    reuse_ttl: Annotated[
        float,
        typer.Option(
            "--reuse-ttl",
            callback=seconds,
            help="Reuse stored final verdicts (deliverable, undeliverable, risky) younger "
            "than this many seconds.",
        ),
    ] = 86400.0,
    reuse_unknown_ttl: Annotated[
        float | None,
        typer.Option(
            "--reuse-unknown-ttl",
            callback=seconds,
            help="Reuse stored 'unknown' results younger than this many seconds "
            "(default REUSE_UNKNOWN_TTL; 0: never).",
        ),
    ] = None,
    rcpts_per_session: Annotated[
        int, typer.Option("--rcpts-per-session", min=1, help="RCPTs per SMTP connection.")
    ] = 20,
    greylist_delays: Annotated[
        str,
        typer.Option(
            "--greylist-delays",
            help="A fixed greylisting schedule (seconds, e.g. 60,300,900) instead of "
            "GREYLIST_FIRST_RETRY growing to GREYLIST_MAX_DELAY; a reply's own wait still wins.",
        ),
    ] = "",
    port: Annotated[
        int | None, typer.Option("--port", **PORT, help="SMTP port (default SMTP_PORT).")
    ] = None,
    enqueue: Annotated[
        bool,
        typer.Option("--enqueue", help="Hand per-domain batches to the RQ workers (REDIS_URL)."),
    ] = False,
    column: Annotated[str | None, COLUMN_OPTION] = None,
    unordered: Annotated[
        bool,
        typer.Option(
            "--unordered",
            help="Write each record as soon as it is answered, not in input order.",
        ),
    ] = False,
    order_buffer: Annotated[
        int,
        typer.Option(
            "--order-buffer",
            min=1,
            help="Records in input order: at most this many lines read and not yet "
            "written (about 1 KB each, ~10 MB at the default); when full, reading waits "
            "for the oldest line's answer. Nothing is dropped or written twice.",
        ),
    ] = ORDER_WINDOW,
    proxy: Annotated[list[str] | None, PROXY_OPTION] = None,
    no_smtp: Annotated[bool, NO_SMTP_OPTION] = False,
    metrics_port: Annotated[  # serve branch: Prometheus metrics (mailprobe.metrics)
        int | None,
        typer.Option("--metrics-port", **PORT, help="Serve Prometheus /metrics on this port."),
    ] = None,
) -> None:
    """Verify a list: one record per input line, in input order (--unordered: as answered).

    A CSV or spreadsheet keeps its own columns: --format csv writes them back as given,
    in their order, followed by the verdict columns; JSON lines carry them as `columns`.

    Exit status: 0 every line has a final answer; 3 lines left pending (--no-wait);
    130 interrupted; 75 the throttle's Redis went away; 141 the output was closed;
    2 bad input or configuration (see the README's table)."""
    from mailprobe.cli.progress import ProgressView, shares_terminal
    from mailprobe.engine.bulk import BulkOptions, ServiceLost, SinkFailed
    from mailprobe.inputs import InputError, read_addresses
    from mailprobe.report import RecordWriter, render_record
    from mailprobe.runs import RunState
    from mailprobe.store import StoreError
    from mailprobe.throttle import ThrottleError

    settings = with_egress(_settings(), proxy, no_smtp)
    if port is not None:
        settings = dataclasses.replace(settings, smtp_port=port)
    try:
        delays = tuple(float(x) for x in greylist_delays.split(",") if x.strip())
        if any(seconds(d) is None or d <= 0 for d in delays):
            raise ValueError(greylist_delays)
    except (ValueError, typer.BadParameter):
        raise _fail(
            f"--greylist-delays {greylist_delays!r}: give seconds like 60,300,900"
        ) from None
    if input_path != "-" and not os.path.isfile(input_path):
        raise _fail(f"cannot read {input_path}: no such file")
    try:  # the input's shape is checked now: a bad file ends here, before any record
        lines = read_addresses(input_path, settings.special_use_allowed, column=column)
    except (InputError, OSError) as exc:
        raise _fail(str(exc)) from None
    if not enqueue:  # direct port 25 blocked and no proxy: one line now, not N timeouts
        check_port25(settings)
    try:
        run = RunState.start(input_path, resume=resume)
    except OSError as exc:
        raise _fail(f"cannot keep the run's state: {exc}") from None
    options = BulkOptions(
        rcpts_per_session=rcpts_per_session,
        greylist_delays=delays,
        greylist_first_retry=settings.greylist_first_retry,
        greylist_max_delay=settings.greylist_max_delay,
        reuse_ttl=None if force else reuse_ttl,
        reuse_since=run.resume_since,
        reuse_unknown_ttl=0.0 if force else reuse_unknown_ttl,
        wait_for_retries=not no_wait,
    )
    # A CSV written to a file for a spreadsheet's export goes back in its dialect: the
    # same delimiter, and a BOM so that Excel reads it as UTF-8 (without one it assumes
    # the locale's code page: https://donatstudios.com/CSV-An-Encoding-Nightmare).
    bom = fmt == Format.csv and lines.spreadsheet
    try:
        encoding = "utf-8-sig" if bom else "utf-8"
        out = open(output, "w", encoding=encoding, newline="") if output else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise _fail(f"cannot write {output}: {exc.strerror or exc}") from None
    # --enqueue's answers come from the fleet, with no event loop here to flush on time.
    writer = RecordWriter(out, fmt.value, headers=lines.headers, delimiter=lines.delimiter,
                          flush_every=0.0 if enqueue else FLUSH_EVERY)  # fmt: skip
    show = not quiet and sys.stderr.isatty()
    total = _count_lines(input_path) if show and input_path != "-" else None
    view = ProgressView(total, enabled=show, shared=output is None and shares_terminal())
    # --enqueue reads and collects the fleet's answers on one thread: its reading is
    # never held (the buffer is then not bounded; --unordered keeps it small).
    order = InputOrder(lines, view.writing(writer.write), ordered=not unordered,
                       window=order_buffer, bounded=not enqueue)  # fmt: skip

    def write(record: dict[str, Any]) -> None:
        view.advance(record)
        order.answered(record)

    if metrics_port is not None:  # serve branch: --metrics-port
        _serve_metrics(metrics_port)
    if enqueue:
        try:
            _verify_enqueued(order.lines(), write, force=force)
        finally:
            order.close()
            writer.close()
            view.close()
            if output:
                out.close()
        return
    use_fast_event_loop()  # uvloop when the `fast` extra is installed (MAILPROBE_UVLOOP=0: off)
    try:
        summary = asyncio.run(
            _stop_on_sigterm(
                _run_verify(
                    order.lines(),
                    write,
                    render_record,
                    settings,
                    options,
                    view.update if show else None,
                    writer.flush,
                )
            )
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        view.close()
        typer.echo(
            "mailprobe: interrupted; what was probed is stored: rerun with --resume", err=True
        )
        raise typer.Exit(VerifyExit.INTERRUPTED) from None
    except StoreError as exc:
        view.close()
        raise _fail(f"database error: {exc}") from None
    except ServiceLost as exc:
        view.close()
        typer.echo(
            f"mailprobe: stopped: {exc}; {exc.pending} addresses left pending, nothing was "
            "answered for them: rerun with --resume",
            err=True,
        )
        raise typer.Exit(VerifyExit.SERVICE_LOST) from None
    except SinkFailed as exc:
        view.close()
        if isinstance(exc.cause, BrokenPipeError):  # `verify ... | head`: end quietly
            _silence_stdout()
            raise typer.Exit(VerifyExit.OUTPUT_CLOSED) from None
        raise _fail(f"{exc}; what was probed is stored: rerun with --resume") from None
    except ThrottleError as exc:
        view.close()
        raise _fail(f"throttle error: {exc}") from None
    finally:
        for finish in (order.close, writer.close, out.close if output else None):
            with contextlib.suppress(OSError):  # a closed pipe takes no more
                if finish is not None:
                    finish()
    view.close()
    view.summary(summary, show)
    for note in [] if quiet else summary.notes:  # egress routes taken out of rotation
        typer.echo(f"mailprobe: {note}", err=True)
    if summary.pending:
        typer.echo(
            f"mailprobe: {summary.pending} retries left pending; rerun with --resume", err=True
        )
        raise typer.Exit(VerifyExit.PENDING)
    else:
        run.finish()


async def _run_verify(
    lines: Iterable[InputLine],
    write: Callable[[dict[str, Any]], None],
    render: Callable[[LineAnswer], dict[str, Any]],
    settings: Settings,
    options: BulkOptions,
    show: Callable[[RunStatus], None] | None = None,
    flush: Callable[[], None] | None = None,
) -> Summary:
    """The embedded run: this process's Context, the bulk engine, records rendered here;
    `show` gets the run's status every STATUS_EVERY seconds; `flush` is called every
    FLUSH_EVERY seconds, so records reach the output while the run waits (greylisting)."""
    from mailprobe.engine import Context
    from mailprobe.engine.bulk import BulkVerifier, verify

    ctx = Context.create(settings, throttle=_metered(settings))  # metrics
    watching: list[asyncio.Task[None]] = []

    async def watch(verifier: BulkVerifier) -> None:
        assert show is not None
        while True:
            show(verifier.status())
            await asyncio.sleep(STATUS_EVERY)

    async def flushing() -> None:
        assert flush is not None
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            with contextlib.suppress(OSError):  # a closed output: the next record says so
                flush()

    def started(verifier: BulkVerifier) -> None:
        if show is not None:
            watching.append(asyncio.create_task(watch(verifier)))
        if flush is not None:
            watching.append(asyncio.create_task(flushing()))

    try:
        return await verify(
            lines,
            lambda line: write(render(_counted(line))),
            ctx=ctx,
            options=options,
            started=started,
        )
    finally:
        for task in watching:
            task.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
        await ctx.aclose()


# -- serve branch: --metrics-port (mailprobe.metrics, the serve extra) -----------------
_METRICS = False


def _serve_metrics(port: int) -> None:
    global _METRICS
    try:
        from mailprobe.metrics import serve_metrics
    except ModuleNotFoundError:
        raise _fail(
            "--metrics-port needs the serve extra: pip install 'mailprobe[serve]'"
        ) from None
    try:
        serve_metrics(port)
    except OSError as exc:
        raise _fail(f"--metrics-port {port}: {exc.strerror or exc}") from None
    _METRICS = True


def _metered(settings: Settings) -> Any:
    if not _METRICS:
        return None
    from mailprobe.metrics import MeteredThrottle
    from mailprobe.throttle import make_throttle

    return MeteredThrottle(make_throttle(settings))


def _counted(line: LineAnswer) -> LineAnswer:
    if _METRICS:
        from mailprobe.metrics import METRICS

        METRICS.answered(line.answer)
    return line


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush into a closed pipe does not
    print "Exception ignored ... BrokenPipeError" (the Python docs' advice for SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


async def _stop_on_sigterm(work: Coroutine[Any, Any, T]) -> T:
    """SIGTERM (kill, a stopping container) ends the run like Ctrl-C: the run is cancelled
    at an await, so its clean-up stores what was probed. (A KeyboardInterrupt raised by
    a plain signal handler could land anywhere, even inside the event loop's own code.)"""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):  # no loop signal handlers on Windows
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await work
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGTERM)


def _verify_enqueued(lines: Iterable[InputLine], sink: Any, *, force: bool) -> None:
    from mailprobe.queue import QueueUnavailable
    from mailprobe.queue.fleet import enqueue_verify

    try:
        jobs, count = enqueue_verify(lines, sink, force=force)
    except QueueUnavailable as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"mailprobe: {count} lines verified by the workers in {jobs} jobs", err=True)


def _count_lines(path: str) -> int:
    from mailprobe.inputs import has_header_row

    with open(path, "rb") as fh:
        count = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell():
            fh.seek(-1, os.SEEK_END)
            count += fh.read(1) != b"\n"
    if count and has_header_row(path):
        count -= 1  # the header line
    return count
