"""The `mailprobe` command: a thin face over the probe and the engine.

One module per command group (`probe`, `verify`, `results`, `admin`), all on the one
Typer app of `common`; importing this package registers every command. The console
entry point is `mailprobe.cli:main`; `python -m mailprobe.cli` runs the same.
"""

from __future__ import annotations

from mailprobe.cli import admin, probe, readback, serve, verify
from mailprobe.cli.common import EXIT_BY_CATEGORY, Exit, VerifyExit, app, main

__all__ = ["EXIT_BY_CATEGORY", "Exit", "VerifyExit", "admin", "app", "main", "probe", "readback",
           "serve", "verify"]  # fmt: skip
