"""What every command shares: the Typer app, exit statuses, settings, one-line failures.

Anything a user can cause (a bad flag, a bad setting, a path that cannot be used)
ends in one line on stderr and exit status 2, never in a traceback: `main` turns
click's usage errors into that line too.
"""

from __future__ import annotations

import asyncio
import math
from enum import IntEnum
from typing import Any

import typer

from mailprobe.address import InvalidAddress
from mailprobe.config import ConfigError, Settings, get_settings

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


class VerifyExit(IntEnum):
    """Exit status of `mailprobe verify` (README: "Exit status")."""

    DONE = 0  # every line has a final answer
    USAGE = 2  # bad input or configuration; a file or database that cannot be used
    PENDING = 3  # --no-wait: the run ended with lines pending a retry (rerun with --resume)
    SERVICE_LOST = 75  # the shared throttle's Redis went away mid-run (sysexits EX_TEMPFAIL)
    INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT); what was probed is stored
    OUTPUT_CLOSED = 141  # whoever read the records stopped reading (128 + SIGPIPE)


VERIFY_EXIT_HELP = (
    "Exit status: 0 every line has a final answer; 3 the run ended with lines pending "
    "(--no-wait: rerun with --resume); 130 interrupted (Ctrl-C, SIGTERM); 75 the throttle's "
    "Redis went away; 141 the output was closed; 2 bad input or configuration."
)

EXIT_BY_CATEGORY = {
    "accept": Exit.ACCEPT,
    "hard_fail": Exit.HARD_FAIL,
    "temp_fail": Exit.TEMP_FAIL,
    "unknown": Exit.UNKNOWN,
}

# Flag bounds, the same as their settings' (config._port, config._int).
PORT = {"min": 1, "max": 65535}


def settings() -> Settings:
    """The checked settings, or one line naming the bad variable and exit 2."""
    try:
        return get_settings()
    except ConfigError as exc:
        typer.echo(f"mailprobe: configuration error: {exc}", err=True)
        raise typer.Exit(Exit.USAGE) from None


def fail(message: str) -> typer.Exit:
    """Say `message` on one line of stderr; the caller raises the returned exit 2."""
    typer.echo(f"mailprobe: {message}", err=True)
    return typer.Exit(Exit.USAGE)


def seconds(value: float | None) -> float | None:
    """Option callback: a number of seconds is finite and not negative (like the settings)."""
    if value is not None and (math.isnan(value) or math.isinf(value) or value < 0):
        raise typer.BadParameter(f"{value} is not a finite, non-negative number of seconds")
    return value


def run_store(coro: Any) -> Any:
    """Run an engine call; database and input failures end in one clear line."""
    from mailprobe.engine import ResultNotStored
    from mailprobe.store import StoreError

    try:
        return asyncio.run(coro)
    except ResultNotStored:
        raise
    except StoreError as exc:
        raise fail(f"database error: {exc}") from None
    except InvalidAddress as exc:
        raise fail(str(exc)) from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mailprobe")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"mailprobe {_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_show_version,
        is_eager=True,
        help="Show the installed version and exit.",
    ),
) -> None:
    """Tell whether an email address exists by asking its mail server (never sends mail)."""


def _usage_line(exc: Exception) -> str:
    """A usage error as one line: what is wrong and where to read more."""
    ctx = getattr(exc, "ctx", None)
    where = getattr(ctx, "command_path", None) or "mailprobe"
    message = " ".join(str(getattr(exc, "format_message", exc.__str__)()).split())
    return f"{where}: {message} (see {where} --help)"


def main(argv: list[str] | None = None) -> int:
    """Entry point for the console script and scripts/*.py; returns the exit status."""
    try:
        status = app(args=argv, prog_name="mailprobe", standalone_mode=False)
        return int(status) if isinstance(status, int) else 0
    except typer.Exit as exc:
        return int(exc.exit_code)
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:
        # click's exceptions (vendored by newer typer, so matched by what they carry)
        kind = type(exc).__name__
        if kind == "NoArgsIsHelpError":  # bare `mailprobe`: the help
            getattr(exc, "show")()  # noqa: B009
            return 0
        if kind == "Abort":  # Ctrl-C while click itself was running
            return 130
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            typer.echo(_usage_line(exc), err=True)  # a bad flag or argument: one line
            return int(getattr(exc, "exit_code") or Exit.USAGE)  # noqa: B009
        raise
