"""Job webhooks: signed, retried with backoff for a bounded number of attempts, each attempt
recorded on the job, and never in the engine's way (deliveries run in their own tasks).

The signature is an HMAC-SHA256 of the exact body under the job's secret, sent as
`X-Mailprobe-Signature: sha256=<hex>`, the scheme GitHub uses for its webhooks
(`X-Hub-Signature-256`, https://docs.github.com/enterprise-cloud@latest/webhooks/using-webhooks/
validating-webhook-deliveries).
A receiver recomputes it over the raw body and compares in constant time.

A target must be a public address: a URL that resolves to loopback, a private,
link-local or otherwise non-global range is refused (no SSRF through the callback)
unless WEBHOOK_ALLOW_PRIVATE names its network. The check is made when the job is
created and again before every attempt, on the addresses the name resolves to then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from mailprobe.metrics import METRICS
from mailprobe.serve import jobstore
from mailprobe.serve.config import ServeConfig
from mailprobe.store import Store, StoreError

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Mailprobe-Signature"
WORKERS = 4  # deliveries in flight at once: a slow receiver holds one, not all


class WebhookRefused(ValueError):
    """The URL may not be called (scheme, or a private / loopback target)."""


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does (and the tests): recompute, compare in constant time."""
    return hmac.compare_digest(sign(secret, body), header)


def _allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, config: ServeConfig) -> bool:
    if config.webhook_allow_all or ip.is_global:
        return True
    return any(ip in net for net in config.webhook_allow)


async def check_target(url: str, config: ServeConfig) -> str:
    """Raise WebhookRefused unless `url` is http(s) to a host whose every address is public
    (or in WEBHOOK_ALLOW_PRIVATE); return the address to connect to (see `pinned`)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"webhook url {url!r}: {exc}") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise WebhookRefused(f"webhook url {url!r}: give an http:// or https:// URL with a host")
    host = parts.hostname
    try:
        ips = [ipaddress.ip_address(host)]
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise WebhookRefused(f"webhook url {url!r}: cannot resolve {host}: {exc}") from None
        ips = [ipaddress.ip_address(info[4][0]) for info in infos]
    refused = [str(ip) for ip in ips if not _allowed(ip, config)]
    if refused:
        raise WebhookRefused(
            f"webhook url {url!r} points at a private or loopback address ({refused[0]}): "
            "refused; allow its network with WEBHOOK_ALLOW_PRIVATE"
        )
    return str(ips[0])


def pinned(url: str, ip: str) -> tuple[str, str, str]:
    """`url` sent to the address that was checked, not to whatever its name resolves to a
    moment later (a name that changes between the check and the request, "DNS
    rebinding", would otherwise reach a private address): (the URL with the IP as its
    host, the Host header, the TLS server name). The name still goes in Host and in TLS's
    SNI, and the certificate is checked against it (httpcore's `sni_hostname` extension)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    address = f"[{ip}]" if ":" in ip else ip
    netloc = address if parts.port is None else f"{address}:{parts.port}"
    shown = host if ":" not in host else f"[{host}]"
    host_header = shown if parts.port is None else f"{shown}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), host_header, host


@dataclass
class Delivery:
    job_id: str
    event: str
    url: str
    secret: str | None
    body: bytes
    attempt: int = 1
    record: bool = True  # recorded on the job (per-address events: failures only)
    line_no: int | None = None  # a per-address event's line (marked done on the line)


class Dispatcher:
    """Queued deliveries, sent by a few worker tasks; a failed one is queued again later."""

    def __init__(self, store: Store, config: ServeConfig) -> None:
        self.store = store
        self.config = config
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._client: httpx.AsyncClient | None = None
        self.on_finished: Callable[[Delivery, bool], None] | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.config.webhook_timeout, follow_redirects=False
        )
        self._tasks = [asyncio.create_task(self._work()) for _ in range(WORKERS)]
        for job_id, made in await asyncio.to_thread(jobstore.pending_webhooks, self.store):
            job = await asyncio.to_thread(jobstore.get_job, self.store, job_id)
            if job is not None:  # a completion webhook a stopped server did not deliver
                self.finished(job, attempt=made + 1)
        for job_id, records in await asyncio.to_thread(jobstore.pending_events, self.store):
            owner = await asyncio.to_thread(jobstore.get_job, self.store, job_id)
            if owner is None:
                continue
            for record in records:
                self.address(owner, record)  # per-address events it did not send

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()

    def send(self, delivery: Delivery) -> None:
        self.queue.put_nowait(delivery)

    def finished(self, job: jobstore.JobView, *, attempt: int = 1) -> None:
        """The completion event of a finished (or cancelled) job."""
        if job.webhook is None:
            return
        payload = {"event": "job.finished", "job": job_summary(job)}
        self.send(Delivery(job.id, "job.finished", job.webhook.url, job.webhook.secret,
                           _body(payload), attempt))  # fmt: skip

    def address(self, job: jobstore.JobView, record: dict[str, Any]) -> None:
        if job.webhook is None or not job.webhook.each:
            return
        payload = {"event": "address.verified", "job_id": job.id, "record": record}
        line = record.get("line")
        self.send(Delivery(job.id, "address.verified", job.webhook.url, job.webhook.secret,
                           _body(payload), record=False,
                           line_no=line if isinstance(line, int) else None))  # fmt: skip

    async def _work(self) -> None:
        while True:
            delivery = await self.queue.get()
            try:
                await self._deliver(delivery)
            except Exception:  # a delivery never takes its worker down
                log.exception("webhook delivery for job %s failed", delivery.job_id)

    async def _deliver(self, d: Delivery) -> None:
        assert self._client is not None
        status: int | None = None
        error: str | None = None
        outcome = "failed"
        try:
            target, host_header, server_name = pinned(d.url, await check_target(d.url, self.config))
            headers = {
                "Host": host_header,
                "Content-Type": "application/json",
                "User-Agent": "mailprobe-webhook",
                "X-Mailprobe-Event": d.event,
                "X-Mailprobe-Delivery": uuid.uuid4().hex,
                "X-Mailprobe-Attempt": str(d.attempt),
            }
            if d.secret:
                headers[SIGNATURE_HEADER] = sign(d.secret, d.body)
            response = await self._client.post(
                target, content=d.body, headers=headers,
                extensions={"sni_hostname": server_name},
            )  # fmt: skip
            status = response.status_code
            if 200 <= status < 300:
                outcome = "ok"
            else:
                error = f"HTTP {status}"
        except WebhookRefused as exc:
            error, outcome = str(exc), "refused"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        METRICS.webhooks.labels(d.event, outcome).inc()
        ok = outcome == "ok"
        final = ok or outcome == "refused" or d.attempt >= self.config.webhook_max_attempts
        if d.record or not ok:
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(
                    jobstore.add_delivery, self.store, d.job_id, d.event, d.attempt,
                    status_code=status, error=error, ok=ok,
                )  # fmt: skip
        if d.line_no is not None and final:
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(jobstore.mark_event_done, self.store, d.job_id, d.line_no)
        if d.event == "job.finished" and final:
            with contextlib.suppress(StoreError):
                state = "delivered" if ok else "failed"
                await asyncio.to_thread(jobstore.set_webhook_state, self.store, d.job_id, state)
        if not final:
            delay = min(
                self.config.webhook_backoff * 2 ** (d.attempt - 1), self.config.webhook_max_backoff
            )
            d.attempt += 1
            self._later(delay, d)

    def _later(self, delay: float, d: Delivery) -> None:
        loop = asyncio.get_running_loop()

        def requeue() -> None:
            self._timers.discard(timer)
            self.queue.put_nowait(d)

        timer = loop.call_later(delay, requeue)
        self._timers.add(timer)


def job_summary(job: jobstore.JobView) -> dict[str, Any]:
    """A job as the API shows it (GET /v1/jobs/{id}), without the live rate."""
    return {
        "id": job.id,
        "status": job.status,
        "name": job.name,
        "total": job.total,
        "done": job.done,
        "counts": {
            v: job.counts.get(v, 0) for v in ("deliverable", "undeliverable", "risky", "unknown")
        },
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "error": job.error,
        "results": {
            "csv": f"/v1/jobs/{job.id}/results?format=csv",
            "jsonl": f"/v1/jobs/{job.id}/results?format=jsonl",
        },
    }


def _body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
