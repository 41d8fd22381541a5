"""Commands around the probing: `db`, `worker`, `doctor`, `reasons`, `config`, `demo`."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from mailprobe.classify import REASONS
from mailprobe.cli.common import PORT, app, fail, settings
from mailprobe.redact import redact_url

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

QUEUES = ("mx", "verify")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations to DATABASE_URL (creates the SQLite file on first use)."""
    from mailprobe.store import Store, StoreError

    current = settings()
    try:
        store = Store(current.database_url)
        store.upgrade()
    except StoreError as exc:
        raise fail(f"database error: {exc}") from None
    typer.echo(f"database {store.shown_url} is at the newest schema")


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option("--queues", "-q", help="Comma-separated queues to serve: mx, verify.")
    ] = "mx,verify",
    burst: Annotated[bool, typer.Option("--burst", help="Exit once the queues are empty.")] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Worker name (default: random).")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port", **PORT, help="Serve Prometheus /metrics on this port (loopback)."
        ),
    ] = None,
) -> None:
    """Serve probe and MX jobs from Redis (REDIS_URL), throttled across the whole fleet."""
    from mailprobe.queue.worker import run_worker

    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if unknown or not names:
        raise fail(f"--queues {queues!r}: serve some of {', '.join(QUEUES)}")
    settings()
    raise typer.Exit(run_worker(names, burst=burst, name=name, metrics_port=metrics_port))


@app.command(epilog="Exit status: 0 every check passed (or was skipped), 1 a warning, 2 a failure.")
def doctor(
    mx_host: Annotated[
        str | None,
        typer.Option("--mx-host", help="MX to connect to (default: the lowest MX of gmail.com)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", **PORT, help="SMTP port (default SMTP_PORT).")
    ] = None,
) -> None:
    """Check this host can probe: DNS, port 25, HELO/PTR, SPF, blocklists, Redis, database."""
    from mailprobe.doctor import doctor_exit_status, format_checks, run_checks

    current = settings()
    checks = asyncio.run(run_checks(current, mx_host=mx_host, port=port))
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
    """Show the effective settings (from the environment and defaults), or what is wrong.

    Passwords in URLs (DATABASE_URL, REDIS_URL) are shown as ***: the output is fit
    to paste into a ticket."""
    for name, value in sorted(settings().as_env().items()):
        shown = redact_url(value) if name.endswith("_URL") or "://" in value else value
        typer.echo(f"{name}={shown}")


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

    raise typer.Exit(asyncio.run(run_demo(settings())))
