"""Single-address work: resolve through the cache, probe, persist; upsert and ingest.

The CLI, the queue jobs and any later API call these functions; they hold no
protocol or storage logic of their own. Async first; the seed's synchronous
helpers (`upsert_generated_email`, `get_or_resolve_mx`) are thin wrappers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mailprobe.address import EmailAddress, InvalidAddress, parse_address
from mailprobe.behavior import behavior_hint
from mailprobe.behavior import default_cache as default_behavior
from mailprobe.config import Settings, get_settings
from mailprobe.dns import DNSLookupError, default_resolver, resolve_host
from mailprobe.flags import is_freemail
from mailprobe.inputs import read_addresses
from mailprobe.mxcache import CachedMX, MXCache
from mailprobe.smtp import aprobe_rcpt, make_tls_context, run_sync
from mailprobe.store import Store, StoreError, open_store
from mailprobe.store import queries as q


def default_store(settings: Settings | None = None) -> Store:
    return open_store((settings or get_settings()).database_url)


_caches: dict[int, MXCache] = {}


def default_mx_cache(store: Store | None = None, settings: Settings | None = None) -> MXCache:
    """One MXCache per Store, so concurrent lookups in this process are shared."""
    store = store or default_store(settings)
    cache = _caches.get(id(store))
    if cache is None or cache.store is not store:
        cache = _caches[id(store)] = MXCache(store, settings)
    return cache


# -- R15: MX resolution through the cache --------------------------------------


async def aget_or_resolve_mx(
    domain: str, force: bool = False, *, cache: MXCache | None = None
) -> CachedMX:
    return await (cache or default_mx_cache()).get(domain, force=force)


def get_or_resolve_mx(domain: str, force: bool = False) -> dict[str, Any]:
    """The seed's helper: the domain's resolution as a dict (lowest_mx, mx_hosts, status...)."""
    return run_sync(aget_or_resolve_mx(domain, force)).as_dict()


async def aresolve_domains(domains: Iterable[str], force: bool = False) -> list[CachedMX]:
    """Resolve many domains at once (the cache shares lookups of the same domain)."""
    cache = default_mx_cache()
    return list(await asyncio.gather(*(cache.get(d, force=force) for d in domains)))


async def stored_domains() -> list[str]:
    """Every distinct domain of the stored addresses, for `resolve --from-db`."""
    from sqlalchemy import select

    from mailprobe.store.models import GeneratedEmail

    def read() -> list[str]:
        with default_store().session() as session:
            stmt = select(GeneratedEmail.domain).distinct().order_by(GeneratedEmail.domain)
            return list(session.scalars(stmt))

    return await asyncio.to_thread(read)


# -- addresses ----------------------------------------------------------------


def upsert_generated_email(
    email: str,
    *,
    person_name: str | None = None,
    source: str | None = None,
    enqueue_probe: bool = True,
    store: Store | None = None,
) -> int:
    """Insert (or find) the normalised address and return its id; enqueue its probe once.

    Idempotent: an address upserted twice is stored once and enqueued once,
    because only the call that moves it from "new" to "queued" enqueues.
    """
    from mailprobe.queue import enqueue_probe_email

    address = parse_address(email)
    store = store or default_store()
    with store.session() as session:
        email_id, _created = q.upsert_email(
            session, address, person_name=person_name, source=source
        )
        claimed = enqueue_probe and queue_worthy(address) and q.claim_for_probe(session, email_id)
    if claimed:
        try:
            enqueue_probe_email(email_id, address.normalized, address.ascii_domain)
        except Exception:
            with store.session() as session:  # let a later upsert enqueue it again
                q.set_status(session, [email_id], "new")
            raise
    return email_id


def queue_worthy(address: EmailAddress) -> bool:
    """The enqueue path skips freemail domains (as the seed's R15 does): probing gmail.com
    & co. in bulk is rarely useful and wears out our welcome. PROBE_FREEMAIL=1 lifts
    this; an explicit `mailprobe probe` always runs."""
    return get_settings().probe_freemail or not is_freemail(address.ascii_domain)


@dataclass
class IngestReport:
    added: int = 0
    existing: int = 0
    enqueued: int = 0
    skipped_freemail: int = 0
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (line, raw, why)


def ingest(
    source: str | Path | TextIO,
    *,
    store: Store | None = None,
    enqueue_probe: bool = False,
    source_name: str | None = None,
) -> IngestReport:
    """Store every good address of a list; report bad lines by number, keep the good ones."""
    from mailprobe.queue import enqueue_probe_email

    store = store or default_store()
    report = IngestReport()
    to_enqueue: list[tuple[int, str, str]] = []
    with store.session() as session:
        for line in read_addresses(source):
            if not line.raw.strip() or line.raw.lstrip().startswith("#"):
                continue
            if line.address is None:
                report.bad.append((line.line_no, line.raw, line.error or "invalid"))
                continue
            email_id, created = q.upsert_email(
                session,
                line.address,
                person_name=line.extra.get("name") or line.extra.get("person_name"),
                source=line.extra.get("source") or source_name,
            )
            report.added += created
            report.existing += not created
            if enqueue_probe and not queue_worthy(line.address):
                report.skipped_freemail += 1
            elif enqueue_probe and q.claim_for_probe(session, email_id):
                to_enqueue.append((email_id, line.address.normalized, line.address.ascii_domain))
    for i, (email_id, email, domain) in enumerate(to_enqueue):
        try:
            enqueue_probe_email(email_id, email, domain)
        except Exception:
            # Not queued after all: back to "new", so the next ingest or upsert queues them.
            with store.session() as session:
                q.set_status(session, [e[0] for e in to_enqueue[i:]], "new")
            raise
        report.enqueued += 1
    return report


# -- probing ------------------------------------------------------------------


async def probe_email(
    email: str,
    *,
    mx_host: str | None = None,
    force_resolve: bool = False,
    email_id: int | None = None,
    settings: Settings | None = None,
    store: Store | None = None,
    port: int | None = None,
    persist: bool = True,
) -> dict[str, Any]:
    """Resolve (through the cache), probe with the MX's behaviour hint, store the result.

    MX hosts are tried in preference order: one that cannot be reached hands
    over to the next, as a sending MTA would. Host names are resolved with our
    resolver (DNS_NAMESERVERS), never the operating system's.
    """
    settings = settings or get_settings()
    address = parse_address(email)
    resolution: CachedMX | None = None
    if mx_host is None:
        store = store or default_store(settings)
        resolution = await default_mx_cache(store, settings).get(
            address.ascii_domain, force=force_resolve
        )
        hosts = resolution.resolution.hosts
    else:
        hosts = [mx_host]
    result = no_mx_result(address.normalized, resolution, settings)
    resolver = default_mx_cache(store, settings).resolver if store else default_resolver(settings)
    for host in hosts:
        try:
            ips = await resolve_host(host, resolver=resolver)
        except (DNSLookupError, InvalidAddress) as exc:
            result = {**result, "mx_host": host, "error": str(exc), "reason": "dns_error"}
            continue
        if not ips:
            result = {**result, "mx_host": host, "error": f"MX host {host} has no address"}
            continue
        result = await aprobe_rcpt(
            address.normalized,
            host,
            connect_to=ips[0],
            **probe_options(settings, port=port, behavior_hint=behavior_hint(host)),
        )
        if result["error_kind"] != "connection_failed":
            break
    if resolution is not None:
        result["dns_status"] = resolution.status.value
        result["flags"] = resolution.flags
    if persist:
        store = store or default_store(settings)
        try:
            await asyncio.to_thread(_save_result, store, result, email_id)
        except StoreError as exc:
            raise ResultNotStored(str(exc), result) from exc
    return result


class ResultNotStored(StoreError):
    """The probe ran but its result could not be stored; `result` still has it."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(f"{message} (the result was not stored)")
        self.result = result


def probe_options(
    settings: Settings, *, port: int | None = None, behavior_hint: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Identity, timeouts and TLS policy for aprobe_rcpt, from the settings."""
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


def no_mx_result(email: str, resolution: CachedMX | None, settings: Settings) -> dict[str, Any]:
    """A result for a domain with nothing to probe: its DNS status is the reason."""
    status = resolution.status.value if resolution else "no_mail_host"
    error = resolution.resolution.error if resolution else None
    return {
        "ok": False,
        "category": "unknown",
        "code": None,
        "message": "",
        "mx_host": None,
        "helo_domain": settings.smtp_helo_domain,
        "elapsed_ms": 0,
        "error": error or f"no MX to probe: {status}",
        "email": email,
        "stage": "dns",
        "enhanced_status": None,
        "reason": status,
        "rule": None,
        "error_kind": "dns",
        "tls": False,
        "transcript": [],
    }


def _save_result(store: Store, result: dict[str, Any], email_id: int | None) -> None:
    with store.session() as session:
        q.add_result(session, result, email_id=email_id, verdict=None)
        if email_id is not None:
            q.set_status(session, [email_id], "probed")


def flush_behavior(store: Store | None = None) -> int:
    """Write the behaviour of every MX probed since the last flush; return how many."""
    snapshots = default_behavior.dirty()
    if snapshots:
        with (store or default_store()).session() as session:
            q.save_mx_behavior(session, snapshots)
    return len(snapshots)


def load_behavior(store: Store | None = None, hosts: Iterable[str] | None = None) -> None:
    """Start from what earlier runs (and other workers) learned about each MX (or `hosts`)."""
    with (store or default_store()).session() as session:
        default_behavior.load(q.load_mx_behavior(session, hosts))


async def probe_many(emails: Iterable[tuple[int | None, str]], **kw: Any) -> list[dict[str, Any]]:
    """Probe each (email_id, email) in turn; the bulk engine with throttles replaces this."""
    return [await probe_email(email, email_id=email_id, **kw) for email_id, email in emails]
