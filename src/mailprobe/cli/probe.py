"""`mailprobe probe` (one address) and `mailprobe resolve` (MX records through the cache)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mailprobe.address import InvalidAddress, parse_address
from mailprobe.cli.common import EXIT_BY_CATEGORY, PORT, Exit, app, fail, run_store, settings
from mailprobe.cli.egress import NO_SMTP_OPTION, PROXY_OPTION, with_egress

if TYPE_CHECKING:
    from mailprobe.mxcache import CachedMX
    from mailprobe.results import Answer


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


def _print_json(result: dict[str, Any]) -> None:
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False))


@app.command(
    epilog=(
        "Exit status: 0 accept (2xx to RCPT TO), 1 hard_fail (5xx), 3 temp_fail (4xx), "
        "4 unknown (no usable reply: timeout, connection failure, DNS), "
        "2 bad input or configuration (nothing was sent). "
        "With --json every outcome is printed as JSON, with the same exit status."
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
        int | None, typer.Option("--port", **PORT, help="SMTP port (default SMTP_PORT, 25).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result dict as JSON.")] = False,
    transcript: Annotated[
        bool, typer.Option("--transcript", "-v", help="Also print the SMTP conversation.")
    ] = False,
    proxy: Annotated[list[str] | None, PROXY_OPTION] = None,
    no_smtp: Annotated[bool, NO_SMTP_OPTION] = False,
) -> None:
    """Probe one address: EHLO, STARTTLS when offered, MAIL FROM, RCPT TO (never DATA)."""
    from mailprobe.results import Outcome

    current = with_egress(settings(), proxy, no_smtp)
    try:
        address = parse_address(email)
    except InvalidAddress as exc:
        if as_json:  # nothing was sent: still a result, in the same shape
            _print_json(
                Outcome.bad_input(
                    email,
                    str(exc),
                    exc.reason,
                    mx_host=mx_host,
                    helo_domain=current.smtp_helo_domain,
                    port=port or current.smtp_port,
                ).as_seed_dict()
            )
            raise typer.Exit(Exit.USAGE) from None
        raise fail(f"bad address: {exc}") from None
    from mailprobe.engine import Context, ResultNotStored, probe_email

    async def call() -> Answer:
        ctx = Context.create(current)
        return await probe_email(
            ctx, address.normalized, mx_host=mx_host, force_resolve=force_resolve, port=port
        )

    try:
        answer: Answer = run_store(call())
    except ResultNotStored as exc:  # the answer still counts: show it, say it was not kept
        typer.echo(f"mailprobe: warning: {exc}", err=True)
        answer = exc.answer
    result = answer.as_seed_dict()
    status = EXIT_BY_CATEGORY[result["category"]]
    if result.get("stage") == "dns":
        status = Exit.UNKNOWN
        if not as_json:
            message = f"{address.domain}: {result['reason']}: {result['error']}"
            typer.echo(f"mailprobe: {message}", err=True)
            raise typer.Exit(status)
    if result["error_kind"] == "bad_input":
        if not as_json:
            raise fail(str(result["error"]))
        status = Exit.USAGE
    if as_json:
        _print_json(result)
    else:
        typer.echo(format_result(result))
        if transcript:
            typer.echo("\n".join(["", "Transcript:", *result["transcript"]]))
    raise typer.Exit(status)


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

    current = settings()
    names = list(domain or [])

    async def run() -> list[CachedMX]:
        ctx = Context.create(current)
        if from_db:
            names.extend(await stored_domains(ctx))
        if not names:
            raise fail("give --domain D or --from-db")
        return await aresolve_domains(names, force=force, ctx=ctx)

    for cached in run_store(run()):
        if as_json:
            typer.echo(json.dumps(cached.as_dict()))
        else:
            hosts = ", ".join(f"{r.preference} {r.host}" for r in cached.resolution.records)
            origin = "stale cache" if cached.stale else "cache" if cached.from_cache else "dns"
            typer.echo(
                f"{cached.resolution.domain:30} {cached.status.value:15} [{hosts or '-'}] "
                f"({origin})"
            )
