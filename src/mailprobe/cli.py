"""The `mailprobe` command: a thin face over the probe and the engine.

Each command parses its options, reads the settings (a bad setting stops it
with the variable's name), calls one async function and prints. No protocol or
storage logic lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from mailprobe.address import InvalidAddress, parse_address
from mailprobe.classify import REASONS
from mailprobe.config import ConfigError, Settings, get_settings

if TYPE_CHECKING:
    from mailprobe.engine.bulk import BulkOptions, Summary
    from mailprobe.inputs import InputLine
    from mailprobe.mxcache import CachedMX
    from mailprobe.results import Answer, LineAnswer

T = TypeVar("T")

app = typer.Typer(
    help="Tell whether an email address exists by asking its mail server (never sends mail).",
    no_args_is_help=True,
    add_completion=False,
)


class Exit(IntEnum):
    """Exit status of `mailprobe probe`, by the seed's category."""

    ACCEPT = 0
    HARD_FAIL = 1
    USAGE = 2  # bad input or configuration: nothing was sent
    TEMP_FAIL = 3
    UNKNOWN = 4  # no usable reply: timeout, connection failure
    SERVICE_LOST = 75  # verify: the shared throttle went away mid-run (sysexits EX_TEMPFAIL)
    OUTPUT_CLOSED = 141  # verify: whoever read the records stopped reading (128 + SIGPIPE)


EXIT_BY_CATEGORY = {
    "accept": Exit.ACCEPT,
    "hard_fail": Exit.HARD_FAIL,
    "temp_fail": Exit.TEMP_FAIL,
    "unknown": Exit.UNKNOWN,
}


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        typer.echo(f"mailprobe: configuration error: {exc}", err=True)
        raise typer.Exit(Exit.USAGE) from None


def _fail(message: str) -> typer.Exit:
    typer.echo(f"mailprobe: {message}", err=True)
    return typer.Exit(Exit.USAGE)


def format_result(result: dict[str, Any]) -> str:
    """The seed's human-readable block, plus the reason line."""
    lines = [
        f"Target : {result['email']}",
        f"MX     : {result['mx_host']}",
        f"HELO   : {result['helo_domain']}",
        f"Result : {result['category']} (code={result['code']}, error={result['error']})",
        f"Reason : {result['reason']} (stage={result['stage']}, "
        f"enhanced={result['enhanced_status']}, tls={'yes' if result['tls'] else 'no'})",
        f"Message: {result['message']}",
        f"Elapsed: {result['elapsed_ms']} ms",
    ]
    return "\n".join(lines)


@app.command(
    epilog=(
        "Exit status: 0 accept (2xx to RCPT TO), 1 hard_fail (5xx), 3 temp_fail (4xx), "
        "4 unknown (no usable reply: timeout, connection failure), "
        "2 bad input or configuration (nothing was sent)."
    )
)
def probe(
    email: Annotated[str, typer.Option("--email", "-e", help="Address to check.")],
    mx_host: Annotated[
        str | None, typer.Option("--mx-host", help="Probe this MX (skips MX resolution).")
    ] = None,
    force_resolve: Annotated[
        bool, typer.Option("--force-resolve", help="Re-resolve the MX, ignoring the cache.")
    ] = False,
    port: Annotated[
        int | None, typer.Option("--port", help="SMTP port (default SMTP_PORT, 25).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result dict as JSON.")] = False,
    transcript: Annotated[
        bool, typer.Option("--transcript", "-v", help="Also print the SMTP conversation.")
    ] = False,
) -> None:
    """Probe one address: EHLO, STARTTLS when offered, MAIL FROM, RCPT TO (never DATA)."""
    settings = _settings()
    try:
        address = parse_address(email)
    except InvalidAddress as exc:
        raise _fail(f"bad address: {exc}") from None
    from mailprobe.engine import Context, ResultNotStored, probe_email

    async def call() -> Answer:
        ctx = Context.create(settings)
        return await probe_email(
            ctx, address.normalized, mx_host=mx_host, force_resolve=force_resolve, port=port
        )

    try:
        answer: Answer = _run_store(call())
    except ResultNotStored as exc:  # the answer still counts: show it, say it was not kept
        typer.echo(f"mailprobe: warning: {exc}", err=True)
        answer = exc.answer
    result = answer.as_seed_dict()
    if result.get("stage") == "dns":
        typer.echo(f"mailprobe: {address.domain}: {result['reason']}: {result['error']}", err=True)
        raise typer.Exit(Exit.UNKNOWN)
    if result["error_kind"] == "bad_input":
        raise _fail(str(result["error"]))
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        typer.echo(format_result(result))
        if transcript:
            typer.echo("\n".join(["", "Transcript:", *result["transcript"]]))
    raise typer.Exit(EXIT_BY_CATEGORY[result["category"]])


def _run_store(coro: Any) -> Any:
    """Run an engine call; database and input failures end in one clear line."""
    from mailprobe.engine import ResultNotStored
    from mailprobe.store import StoreError

    try:
        return asyncio.run(coro)
    except ResultNotStored:
        raise
    except StoreError as exc:
        raise _fail(f"database error: {exc}") from None
    except InvalidAddress as exc:
        raise _fail(str(exc)) from None


COLUMN_OPTION = typer.Option("--column", help="Address column: header name or number.")


db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations to DATABASE_URL (creates the SQLite file on first use)."""
    from mailprobe.store import Store, StoreError

    settings = _settings()
    try:
        store = Store(settings.database_url)
        store.upgrade()
    except StoreError as exc:
        raise _fail(f"database error: {exc}") from None
    typer.echo(f"database {store.shown_url} is at the newest schema")


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


@app.command()
def resolve(
    domain: Annotated[
        list[str] | None, typer.Option("--domain", "-d", help="Domain to resolve (repeatable).")
    ] = None,
    from_db: Annotated[
        bool, typer.Option("--from-db", help="Resolve every domain of the stored addresses.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Ignore the cache.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Resolve MX records through the cache (domain_resolutions) and show them."""
    from mailprobe.engine import Context, aresolve_domains, stored_domains

    settings = _settings()
    names = list(domain or [])

    async def run() -> list[CachedMX]:
        ctx = Context.create(settings)
        if from_db:
            names.extend(await stored_domains(ctx))
        if not names:
            raise _fail("give --domain D or --from-db")
        return await aresolve_domains(names, force=force, ctx=ctx)

    for cached in _run_store(run()):
        if as_json:
            typer.echo(json.dumps(cached.as_dict()))
        else:
            hosts = ", ".join(f"{r.preference} {r.host}" for r in cached.resolution.records)
            origin = "stale cache" if cached.stale else "cache" if cached.from_cache else "dns"
            typer.echo(
                f"{cached.resolution.domain:30} {cached.status.value:15} [{hosts or '-'}] "
                f"({origin})"
            )


class Format(StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    table = "table"


@app.command()
def verify(
    input_path: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="Text (one address a line), CSV with an 'email' column, or - for stdin.",
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
            help="Reuse stored final verdicts (deliverable, undeliverable, risky) younger "
            "than this many seconds.",
        ),
    ] = 86400.0,
    reuse_unknown_ttl: Annotated[
        float | None,
        typer.Option(
            "--reuse-unknown-ttl",
            min=0.0,
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
        int | None, typer.Option("--port", help="SMTP port (default SMTP_PORT).")
    ] = None,
    enqueue: Annotated[
        bool,
        typer.Option("--enqueue", help="Hand per-domain batches to the RQ workers (REDIS_URL)."),
    ] = False,
    column: Annotated[str | None, COLUMN_OPTION] = None,
) -> None:
    """Verify a list: one record per input line, streamed as results arrive."""
    from mailprobe.engine.bulk import BulkOptions, ServiceLost, SinkFailed
    from mailprobe.inputs import InputError, read_addresses
    from mailprobe.report import ProgressView, RecordWriter, render_record
    from mailprobe.runs import RunState
    from mailprobe.store import StoreError
    from mailprobe.throttle import ThrottleError

    settings = _settings()
    if port is not None:
        settings = dataclasses.replace(settings, smtp_port=port)
    try:
        delays = tuple(float(x) for x in greylist_delays.split(",") if x.strip())
    except ValueError:
        raise _fail(
            f"--greylist-delays {greylist_delays!r}: give seconds like 60,300,900"
        ) from None
    if input_path != "-" and not os.path.isfile(input_path):
        raise _fail(f"cannot read {input_path}: no such file")
    try:  # the input's shape is checked now: a bad file ends here, before any record
        lines = read_addresses(input_path, settings.special_use_allowed, column=column)
    except (InputError, OSError) as exc:
        raise _fail(str(exc)) from None
    run = RunState.start(input_path, resume=resume)
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
    out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout  # noqa: SIM115
    writer = RecordWriter(out, fmt.value)
    show = not quiet and sys.stderr.isatty()
    total = _count_lines(input_path) if show and input_path != "-" else None
    view = ProgressView(total, enabled=show)

    def write(record: dict[str, Any]) -> None:
        writer.write(record)
        view.advance(record)

    if enqueue:
        try:
            _verify_enqueued(lines, write, force=force)
        finally:
            writer.close()
            view.close()
            if output:
                out.close()
        return
    try:
        summary = asyncio.run(
            _stop_on_sigterm(
                _run_verify(
                    lines,
                    write,
                    render_record,
                    settings,
                    options,
                )
            )
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        view.close()
        typer.echo(
            "mailprobe: interrupted; what was probed is stored: rerun with --resume", err=True
        )
        raise typer.Exit(130) from None
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
        raise typer.Exit(Exit.SERVICE_LOST) from None
    except SinkFailed as exc:
        view.close()
        if isinstance(exc.cause, BrokenPipeError):  # `verify ... | head`: end quietly
            _silence_stdout()
            raise typer.Exit(Exit.OUTPUT_CLOSED) from None
        raise _fail(f"{exc}; what was probed is stored: rerun with --resume") from None
    except ThrottleError as exc:
        view.close()
        raise _fail(f"throttle error: {exc}") from None
    finally:
        with contextlib.suppress(OSError):  # a closed pipe takes no more
            writer.close()
            if output:
                out.close()
    view.close()
    view.summary(summary)
    if summary.pending:
        typer.echo(
            f"mailprobe: {summary.pending} retries left pending; rerun with --resume", err=True
        )
    else:
        run.finish()


async def _run_verify(
    lines: Iterable[InputLine],
    write: Callable[[dict[str, Any]], None],
    render: Callable[[LineAnswer], dict[str, Any]],
    settings: Settings,
    options: BulkOptions,
) -> Summary:
    """The embedded run: this process's Context, the bulk engine, records rendered here."""
    from mailprobe.engine import Context
    from mailprobe.engine.bulk import verify

    ctx = Context.create(settings)
    try:
        return await verify(lines, lambda line: write(render(line)), ctx=ctx, options=options)
    finally:
        await ctx.aclose()


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


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option("--queues", "-q", help="Comma-separated queues to serve: mx, verify.")
    ] = "mx,verify",
    burst: Annotated[bool, typer.Option("--burst", help="Exit once the queues are empty.")] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Worker name (default: random).")
    ] = None,
) -> None:
    """Serve probe and MX jobs from Redis (REDIS_URL), throttled across the whole fleet."""
    from mailprobe.queue.worker import run_worker

    names = [q.strip() for q in queues.split(",") if q.strip()]
    raise typer.Exit(run_worker(names, burst=burst, name=name))


@app.command(epilog="Exit status: 0 every check passed (or was skipped), 1 a warning, 2 a failure.")
def doctor(
    mx_host: Annotated[
        str | None,
        typer.Option("--mx-host", help="MX to connect to (default: the lowest MX of gmail.com)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="SMTP port (default SMTP_PORT).")
    ] = None,
) -> None:
    """Check this host can probe: DNS, port 25, HELO/PTR, SPF, blocklists, Redis, database."""
    from mailprobe.doctor import doctor_exit_status, format_checks, run_checks

    settings = _settings()
    checks = asyncio.run(run_checks(settings, mx_host=mx_host, port=port))
    typer.echo(format_checks(checks))
    raise typer.Exit(doctor_exit_status(checks))


@app.command()
def reasons(
    markdown: Annotated[bool, typer.Option("--markdown", help="As a Markdown table.")] = False,
) -> None:
    """List every reason a probe can report, what it says about the address, and sisimai's name."""
    if markdown:
        typer.echo("| reason | says about the address | nearest sisimai reason | meaning |")
        typer.echo("|---|---|---|---|")
    for reason, info in REASONS.items():
        if markdown:
            typer.echo(f"| `{reason}` | {info.signal} | {info.sisimai} | {info.meaning} |")
        else:
            typer.echo(f"{reason:22} {info.signal:15} {info.sisimai:14} {info.meaning}")


@app.command()
def config() -> None:
    """Show the effective settings (from the environment and defaults), or what is wrong."""
    for name, value in sorted(_settings().as_env().items()):
        typer.echo(f"{name}={value}")


@app.command()
def demo() -> None:
    """Probe a few addresses against a simulated mail server on loopback (no internet)."""
    try:  # mailprobe.testing needs the testing extra (dnslib, trustme)
        from mailprobe.demo import run_demo
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in {"dnslib", "trustme"}:
            raise
        message = "mailprobe demo needs the testing extra: pip install 'mailprobe[testing]'"
        typer.echo(message, err=True)
        raise typer.Exit(2) from None

    raise typer.Exit(asyncio.run(run_demo(_settings())))


def main(argv: list[str] | None = None) -> int:
    """Entry point for the console script and scripts/*.py; returns the exit status."""
    try:
        status = app(args=argv, prog_name="mailprobe", standalone_mode=False)
        return int(status) if isinstance(status, int) else 0
    except typer.Exit as exc:
        return int(exc.exit_code)
    except SystemExit as exc:  # click's own usage errors
        return int(exc.code or 0)
    except Exception as exc:  # click.UsageError and friends carry their own message
        show = getattr(exc, "show", None)
        if callable(show):
            show()
            return int(getattr(exc, "exit_code", Exit.USAGE))
        raise


if __name__ == "__main__":
    sys.exit(main())
