"""`mailprobe demo`: the whole flow, end to end, against a simulated mail world on loopback.

A newcomer sees what mailprobe does without internet access or port 25: a small
world of domains (plain Postfix-like servers, Gmail- and Outlook-like clusters,
a catch-all, greylisting, a blocklisted sender, null MX, NXDOMAIN, a dead
primary MX...) answers with real servers' reply texts, and `mailprobe verify`'s
engine checks every address. Each verdict is compared with the world's truth.
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

from rich.console import Console
from rich.table import Table

from mailprobe.config import Settings
from mailprobe.engine.bulk import BulkOptions, verify
from mailprobe.engine.context import Context
from mailprobe.inputs import entry
from mailprobe.report import VERDICT_STYLE, render_record
from mailprobe.store import Store
from mailprobe.testing.world import SimWorld, demo_world


async def run_demo(settings: Settings) -> int:
    """Verify the demo world's addresses; return 0 when every verdict matches the truth."""
    console = Console(width=120) if not Console().is_terminal else Console()
    world = demo_world()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mailprobe-demo-") as tmp:
        async with world:
            demo_settings = _settings_for(world, settings, f"sqlite:///{tmp}/demo.db")
            store = Store(demo_settings.database_url)
            store.upgrade()
            allowed = demo_settings.special_use_allowed
            lines = [
                entry(n, raw, special_use_allowed=allowed)
                for n, raw in enumerate(world.addresses(True), start=1)
            ]
            greylist = world.config.greylist_seconds + 0.5
            options = BulkOptions(reuse_ttl=None, greylist_delays=(greylist, greylist))
            console.print(f"[bold]mailprobe demo[/]: {world.describe()}\n")
            ctx = Context.create(demo_settings, store=store)
            try:
                summary = await verify(
                    lines, lambda la: records.append(render_record(la)), ctx=ctx, options=options
                )
            finally:
                await ctx.aclose()
            stats = world.stats()
            store.dispose()
    table = Table(title="verdicts (nothing left this machine)")
    for column in ("address", "verdict", "reason", "code", "MX", "truth"):
        table.add_column(column, no_wrap=column in {"address", "verdict"})
    wrong = 0
    for r in sorted(records, key=lambda r: int(r["line"])):
        expected = world.expected_verdict(r["email"])
        ok = expected is None or expected == r["verdict"]
        wrong += not ok
        style = VERDICT_STYLE.get(r["verdict"], "")
        table.add_row(
            r["email"], f"[{style}]{r['verdict']}[/]", r["reason"], str(r["code"] or ""),
            r["mx_host"] or "", "ok" if ok else f"[red]expected {expected}[/]",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"{summary.total} lines in {summary.elapsed:.1f}s; the servers saw {stats.connections} "
        f"connections carrying {stats.rcpts} RCPTs, {stats.cap_violations} cap violations; "
        f"DATA {'RECEIVED (bug!)' if stats.data_received else 'never sent'}."
    )
    return 1 if wrong or stats.data_received else 0


def _settings_for(world: SimWorld, settings: Settings, database_url: str) -> Settings:
    env = world.env()
    return dataclasses.replace(
        settings,
        dns_nameservers=(env["DNS_NAMESERVERS"],),
        smtp_port=int(env["SMTP_PORT"]),
        smtp_helo_domain=env["SMTP_HELO_DOMAIN"],
        smtp_mail_from=env["SMTP_MAIL_FROM"],
        special_use_allowed=tuple(env["SPECIAL_USE_ALLOWED"].split(",")),
        smtp_connect_timeout=3.0,
        smtp_command_timeout=3.0,
        smtp_probe_deadline=20.0,
        database_url=database_url,
        redis_url=None,
        global_rps=50.0,
        per_mx_rps_default=5.0,
    )
