"""The egress flags of `probe` and `verify` (--proxy, --no-smtp) and verify's port 25
check before a run (see `mailprobe.egress` and `mailprobe.doctor.egress`)."""

from __future__ import annotations

import asyncio
import dataclasses

import typer

from mailprobe.cli.common import fail
from mailprobe.config import Settings
from mailprobe.egress import RouteTable, parse_proxy_url

PROXY_OPTION = typer.Option(
    "--proxy",
    help="Probe through this SOCKS proxy: socks5://[user:pass@]host:port (also socks5h://, "
    "socks4://); repeatable; default SMTP_PROXY.",
)
NO_SMTP_OPTION = typer.Option(
    "--no-smtp",
    help="Ask no mail server: answer from DNS, syntax and disposable/role data alone "
    "(unknown / smtp_skipped for what those cannot settle).",
)


def with_egress(settings: Settings, proxies: list[str] | None, no_smtp: bool) -> Settings:
    """The settings with the flags applied; a bad --proxy ends in one line (exit 2)."""
    if proxies:
        for url in proxies:
            try:
                parse_proxy_url(url)
            except ValueError as exc:
                raise fail(f"--proxy: {exc}") from None
        settings = dataclasses.replace(settings, smtp_proxy=tuple(proxies))
    if no_smtp:
        settings = dataclasses.replace(settings, no_smtp=True)
    try:
        RouteTable.from_settings(settings)
    except ValueError as exc:
        raise fail(f"--proxy: {exc}") from None
    return settings


def check_port25(settings: Settings) -> None:
    """Before a run that dials MX hosts directly: when port 25 does not connect from
    here, say so in one line and stop (exit 2) rather than time out on every address."""
    if settings.no_smtp or not settings.port25_check:
        return
    from mailprobe.doctor.egress import port25_blocked

    try:
        blocked = asyncio.run(port25_blocked(settings))
    except KeyboardInterrupt:  # nothing was probed yet: end quietly
        typer.echo("mailprobe: interrupted before the run started", err=True)
        raise typer.Exit(130) from None
    if blocked is not None:
        raise fail(blocked)
