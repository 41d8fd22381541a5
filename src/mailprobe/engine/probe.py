"""One address, start to finish: resolve, probe (inside a throttle slot when asked), decide,
store. `mailprobe probe`, the queue jobs and the embedded queue all come through here;
bulk verify decides the same way (`results.answer_for`) and stores the same row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from mailprobe.address import InvalidAddress, ReservedDomain, parse_address
from mailprobe.config import Settings
from mailprobe.dns import DNSLookupError, resolve_host
from mailprobe.egress import Route, egress_key
from mailprobe.engine.context import Context
from mailprobe.engine.egress import probe_routed
from mailprobe.flags import flags_for
from mailprobe.mxcache import CachedMX
from mailprobe.results import Answer, Outcome, answer_for
from mailprobe.smtp import make_tls_context
from mailprobe.store import StoreError
from mailprobe.store import queries as q
from mailprobe.store.models import utcnow
from mailprobe.throttle import Slot, Throttle, ThrottleError, penalty_reason

log = logging.getLogger(__name__)
CATCH_ALL_TTL = 7 * 86400.0  # seconds a domain's catch-all finding is trusted


class ResultNotStored(StoreError):
    """The probe ran but its answer could not be stored; `answer` still has it."""

    def __init__(self, message: str, answer: Answer) -> None:
        super().__init__(f"{message} (the result was not stored)")
        self.answer = answer


def probe_options(
    settings: Settings, *, port: int | None = None, behavior_hint: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Identity, timeouts and TLS policy for `smtp.probe_address`, from the settings."""
    return {
        "helo_domain": settings.smtp_helo_domain,
        "mail_from": settings.smtp_mail_from,
        "connect_timeout": settings.smtp_connect_timeout,
        "command_timeout": settings.smtp_command_timeout,
        "behavior_hint": behavior_hint,
        "port": port or settings.smtp_port,
        "deadline": settings.smtp_probe_deadline,
        "source_address": settings.smtp_source_address,
        "starttls": settings.smtp_starttls,
        "tls_context": make_tls_context(settings.smtp_tls_verify, settings.smtp_tls_cafile),
    }


async def probe_email(
    ctx: Context,
    email: str,
    *,
    mx_host: str | None = None,
    force_resolve: bool = False,
    email_id: int | None = None,
    port: int | None = None,
    persist: bool = True,
    route: Route | None = None,
) -> Answer:
    """Resolve (through the cache), probe with the MX's behaviour hint, decide, store.

    MX hosts are tried in preference order (equal preferences in a random order,
    hosts remembered dead last): one we cannot connect to (refused, reset, or no
    connection within the connect timeout) hands over to the next, as a sending MTA
    would (RFC 5321 §5.1), and is remembered dead. Host names are resolved with our
    resolver (DNS_NAMESERVERS), never the operating system's. Raises
    InvalidAddress for bad input (nothing is sent) and ResultNotStored when the
    answer could not be stored. An address at a special-use domain (not allowed by
    SPECIAL_USE_ALLOWED) is answered reserved_domain, with nothing looked up or sent.
    """
    settings = ctx.settings
    try:
        address = parse_address(email, special_use_allowed=settings.special_use_allowed)
    except ReservedDomain as exc:
        reserved = Outcome.bad_input(email.strip(), str(exc), exc.reason)
        return await _stored(ctx, answer_for(reserved, attempts=0), email_id, persist)
    resolution: CachedMX | None = None
    if mx_host is None:
        resolution = await ctx.mx_cache.get(address.ascii_domain, force=force_resolve)
        order = resolution.resolution.try_order()
        hosts = ctx.behavior.live_first(order, settings.mx_dead_ttl)
    else:
        hosts = [mx_host]
    outcome = no_mail_host(address.normalized, resolution, settings)
    for host in hosts:
        try:
            ips = await resolve_host(
                host, resolver=ctx.mx_cache.resolver, patience=settings.dns_max_timeout
            )
        except (DNSLookupError, InvalidAddress) as exc:
            outcome = Outcome.failure(
                address.normalized, kind="dns_error", error=str(exc), mx_host=host,
                helo_domain=settings.smtp_helo_domain,
            )  # fmt: skip
            continue
        if not ips:
            outcome = outcome.with_evidence(mx_host=host, error=f"MX host {host} has no address")
            continue
        options = probe_options(settings, port=port, behavior_hint=ctx.behavior.hint(host))
        outcome = await probe_routed(  # through the MX's egress routes (`route` first)
            ctx.routes, address.normalized, host, prefer=route, connect_to=ips[0], **options
        )
        if not unreachable(outcome):
            ctx.behavior.mark_alive(host)
            break
        ctx.behavior.mark_dead(host)
    catch_all = None
    if resolution is not None and resolution.resolution.is_primary(outcome.mx_host or ""):
        # The domain's finding was made at its primary MX; a backup's acceptance says
        # nothing it could vouch for (see `bulk.state.DomainState.tracker`).
        catch_all = resolution.catch_all_fresh(utcnow(), CATCH_ALL_TTL)
    answer = answer_for(
        outcome,
        catch_all=catch_all,
        dns_status=resolution.status.value if resolution else None,
        flags=flags_for(address.local, address.ascii_domain),
    )
    return await _stored(ctx, answer, email_id, persist)


async def _stored(ctx: Context, answer: Answer, email_id: int | None, persist: bool) -> Answer:
    if persist:
        try:
            await asyncio.to_thread(_save, ctx, answer, email_id)
        except StoreError as exc:
            raise ResultNotStored(str(exc), answer) from exc
    return answer


def unreachable(outcome: Outcome) -> bool:
    """No connection at all: refused or reset, unreachable, or no SYN-ACK within the
    connect timeout (Postfix: "When no connection can be made within the deadline, the
    Postfix SMTP client tries the next address on the mail exchanger list",
    https://www.postfix.org/postconf.5.html#smtp_connect_timeout). A server that
    connects and then stalls is not unreachable: it is slow."""
    return outcome.stage == "connect" and outcome.error_kind in {"connection_failed", "timeout"}


def no_mail_host(email: str, resolution: CachedMX | None, settings: Settings) -> Outcome:
    """The outcome for a domain with nothing to probe: its DNS status is the reason."""
    status = resolution.status.value if resolution else "no_mail_host"
    error = resolution.resolution.error if resolution else None
    return Outcome.no_mail_host(email, status, error, helo_domain=settings.smtp_helo_domain)


def _save(ctx: Context, answer: Answer, email_id: int | None) -> None:
    with ctx.store.session() as session:
        q.add_answer(session, answer, email_id=email_id)
        if email_id is not None:
            q.set_status(session, [email_id], "probed")


async def probe_in_slot(
    ctx: Context,
    email: str,
    *,
    email_id: int | None = None,
    force: bool = False,
    lease: float | None = None,
) -> Answer:
    """`probe_email` inside a throttle slot for the domain's lowest MX (the fleet's caps
    when the throttle is Redis-backed); penalise the MX when it pushed back (421, rate
    limit); store the answer and what the MX showed. Raises ThrottleTimeout when no slot
    frees up within THROTTLE_WAIT."""
    try:
        address = parse_address(email, special_use_allowed=ctx.settings.special_use_allowed)
    except ReservedDomain:  # nothing to resolve or dial: probe_email answers reserved_domain
        return await probe_email(ctx, email, email_id=email_id)
    resolution = await ctx.mx_cache.get(address.ascii_domain, force=force)
    mx = resolution.lowest_mx
    if mx is None:  # nothing to dial, so no slot: DNS answers
        answer = await probe_email(ctx, address.normalized, email_id=email_id)
    else:
        # A forked job starts with an empty cache: adopt what the fleet knows.
        await asyncio.to_thread(ctx.load_behavior, resolution.resolution.hosts)
        throttle = ctx.throttle
        route = next(iter(ctx.routes.choose(mx)), None)  # the caps are the route's (egress)
        async with (
            throttle.slot(egress_key(route, mx), wait=ctx.settings.throttle_wait) as slot,
            renewing(throttle, slot, lease),
        ):
            answer = await probe_email(ctx, address.normalized, email_id=email_id, route=route)
        reason = penalty_reason(answer.outcome.as_seed_dict())
        if reason is not None:
            try:
                await throttle.penalize(egress_key(route, answer.mx_host or mx), reason=reason)
            except ThrottleError as exc:
                log.warning("could not penalize %s: %s", mx, exc)
    try:
        await asyncio.to_thread(ctx.flush_behavior)
    except Exception as exc:  # statistics only: never fail a probe that has been stored
        log.warning("could not store MX behaviour: %s", exc)
    return answer


@contextlib.asynccontextmanager
async def renewing(throttle: Throttle, slot: Slot, lease: float | None) -> AsyncIterator[None]:
    """Keep a leased slot alive while the body runs (a dead worker stops renewing)."""
    if slot.expires_at is None or lease is None:  # no lease (in-process throttle)
        yield
        return

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease / 3)
            try:
                if not await throttle.renew(slot, lease):
                    log.warning("throttle slot for %s lost before the probe ended", slot.mx_host)
                    return
            except ThrottleError as exc:
                log.warning("could not renew throttle slot for %s: %s", slot.mx_host, exc)

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def probe_queued(ctx: Context, limit: int | None = None) -> list[Answer]:
    """Embedded mode: probe every address left "queued" in the database, in turn."""

    def read() -> list[tuple[int, str]]:
        with ctx.store.session() as session:
            return q.queued_emails(session, limit)

    rows = await asyncio.to_thread(read)
    return [await probe_email(ctx, email, email_id=email_id) for email_id, email in rows]
