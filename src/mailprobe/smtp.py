"""The seed's probe: one address at one MX over one `SMTPSession`. Never DATA.

`probe_address` gives the typed `Outcome`; `aprobe_rcpt` renders it as the seed's
result dict and `probe_rcpt` is its thin synchronous face. The session itself (the
protocol for one connection, reused by the bulk engine) is `mailprobe.smtp_session`;
its names are importable from here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from mailprobe.address import InvalidAddress, check_hostname, parse_address
from mailprobe.behavior import record_mx_probe
from mailprobe.classify import Reason, classify_error
from mailprobe.egress import Route
from mailprobe.results import Outcome
from mailprobe.smtp_session import (
    COURTESY_TIMEOUT,
    POSITIVE_REPLIES,
    ErrorKind,
    Reply,
    SessionError,
    SMTPSession,
    StageRefused,
    Timeouts,
    _check_host,
    effective_timeouts,
    make_tls_context,
)

__all__ = [
    "COURTESY_TIMEOUT",
    "POSITIVE_REPLIES",
    "ErrorKind",
    "Reply",
    "SMTPSession",
    "SessionError",
    "StageRefused",
    "Timeouts",
    "aprobe_rcpt",
    "effective_timeouts",
    "make_tls_context",
    "probe_address",
    "probe_rcpt",
    "run_sync",
    "skipped",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# -- the seed's probe ----------------------------------------------------------

Recorder = Callable[..., Any]


async def probe_address(
    email: str,
    mx_host: str,
    *,
    helo_domain: str,
    mail_from: str,
    connect_timeout: float = 10.0,
    command_timeout: float = 10.0,
    behavior_hint: Mapping[str, Any] | None = None,
    port: int = 25,
    deadline: float | None = None,
    source_address: str | None = None,
    starttls: bool = True,
    tls_context: ssl.SSLContext | None = None,
    recorder: Recorder | None = None,
    connect_to: str | None = None,
    route: Route | None = None,
) -> Outcome:
    """Probe one address at one MX: one connection, one RCPT, the typed outcome.

    Never raises for a server's behaviour: every outcome, a refusal, a timeout
    or a dropped connection, is an Outcome. Bad input is one too (error_kind
    bad_input) and nothing is sent. `connect_to` is the IP to dial when the
    caller resolved `mx_host` itself; `mx_host` still names the server. `route`
    (mailprobe.egress) is the way out: its proxy or source address; a route that
    skips SMTP (--no-smtp) answers smtp_skipped without dialling.
    """
    started = time.monotonic()
    try:
        address = parse_address(email)
        email = address.normalized
        mx_host = _check_host(mx_host)
        helo_domain = check_hostname(helo_domain, "helo_domain")
        if connect_to is not None:
            connect_to = _check_host(connect_to)
        sender = parse_address(mail_from).wire
    except (InvalidAddress, AttributeError, TypeError) as exc:
        return Outcome.bad_input(
            email, str(exc), mx_host=mx_host, helo_domain=helo_domain, port=port
        )

    if route is not None and route.skip:
        return skipped(email, mx_host, helo_domain=helo_domain, port=port)
    timeouts = effective_timeouts(connect_timeout, command_timeout, behavior_hint)
    budget = deadline or (timeouts.connect + 6 * timeouts.command)
    if route is not None and route.source_address:
        source_address = route.source_address
    session = SMTPSession(
        mx_host=mx_host,
        helo_domain=helo_domain,
        port=port,
        connect_to=connect_to,
        connect_timeout=timeouts.connect,
        command_timeout=timeouts.command,
        source_address=source_address,
        starttls=starttls,
        tls_context=tls_context,
        proxy=route.proxy if route is not None else None,
    )
    reply: Reply | None = None
    failure: dict[str, Any] = {}  # why there is no reply: Outcome fields
    try:
        async with asyncio.timeout(budget):
            try:
                await session.open()
                if address.needs_smtputf8 and not session.smtputf8:
                    failure = {
                        "stage": "ehlo",
                        "reason": Reason.SMTPUTF8_UNSUPPORTED.value,
                        "error": "address needs SMTPUTF8 and the server does not offer it",
                    }
                else:
                    await session.mail(sender)
                    reply = await session.rcpt(address)
                    await _courtesy(session.rset())
            except StageRefused as refused:
                reply = refused.reply
            finally:
                await session.close()
    except SessionError as exc:
        failure = {
            "error": str(exc),
            "error_kind": exc.kind.value,
            "stage": exc.stage,
            "reason": classify_error(exc.kind.value).value,
        }
    except TimeoutError:
        failure = {
            "error": f"timeout at {session.stage}: probe deadline of {budget:g}s exceeded",
            "error_kind": ErrorKind.TIMEOUT.value,
            "stage": session.stage,
            "reason": Reason.TIMEOUT.value,
        }
    except OSError as exc:
        failure = {
            "error": f"{type(exc).__name__} at {session.stage}: {exc}",
            "error_kind": ErrorKind.PROTOCOL.value,
            "stage": session.stage,
            "reason": Reason.UNKNOWN.value,
        }
    finally:
        session.close_transport()  # in case the deadline cut a QUIT short
    if session.out_of_step and reply is not None:
        # QUIT (or a reply nobody asked for) showed the replies did not match the commands:
        # the RCPT reply we read may have answered another command. It says nothing.
        reply = None
        failure = {
            "error": "replies out of step: the reply read for RCPT may answer another command",
            "error_kind": ErrorKind.OUT_OF_STEP.value,
            "stage": "rcpt",
            "reason": Reason.PROTOCOL_ERROR.value,
        }

    evidence: dict[str, Any] = {
        "helo_domain": helo_domain,
        "tls": session.tls,
        "port": port,
        "transcript": tuple(session.transcript),
        "elapsed_ms": int((time.monotonic() - started) * 1000),
    }
    if reply is not None:
        outcome = Outcome.from_reply(
            email,
            stage=reply.stage,
            code=reply.code,
            message=reply.message,
            mx_host=mx_host,
            enhanced_status=reply.enhanced,
            **evidence,
        )
    else:
        failure = {"reason": Reason.UNKNOWN.value, "stage": session.stage, **failure}
        outcome = Outcome(email=email, mx_host=mx_host, **failure, **evidence)
    _tell_behavior_hook(recorder or record_mx_probe, outcome)
    return outcome


def skipped(email: str, mx_host: str | None, **evidence: Any) -> Outcome:
    """--no-smtp: what is known without asking a server (DNS, syntax, lists): nothing
    about the mailbox, so unknown / smtp_skipped."""
    return Outcome(
        email=email,
        reason=Reason.SMTP_SKIPPED.value,
        stage="connect",
        mx_host=mx_host,
        error="SMTP skipped (--no-smtp): no server was asked",
        error_kind="smtp_skipped",
        **evidence,
    )


async def aprobe_rcpt(
    email: str,
    mx_host: str,
    *,
    helo_domain: str,
    mail_from: str,
    connect_timeout: float = 10.0,
    command_timeout: float = 10.0,
    behavior_hint: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The seed's probe, async: `probe_address` rendered as the seed's result dict."""
    outcome = await probe_address(
        email,
        mx_host,
        helo_domain=helo_domain,
        mail_from=mail_from,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
        behavior_hint=behavior_hint,
        **options,
    )
    return outcome.as_seed_dict()


async def _courtesy(awaitable: Any) -> None:
    """RSET after the answer: its failure changes nothing we learned."""
    with contextlib.suppress(SessionError, OSError, TimeoutError):
        await awaitable


def _tell_behavior_hook(recorder: Recorder, outcome: Outcome) -> None:
    """The seed's behaviour hook (record_mx_probe): what this MX did, for later probes.
    Never fails the probe."""
    try:
        recorder(
            outcome.mx_host,
            latency_ms=outcome.elapsed_ms,
            error_kind=outcome.error_kind,
            code=outcome.code,
            reason=outcome.reason,
            stage=outcome.stage,
        )
    except Exception:  # a broken hook must not lose the result
        log.exception("record_mx_probe failed for %s", outcome.mx_host)


def probe_rcpt(
    email: str,
    mx_host: str,
    *,
    helo_domain: str,
    mail_from: str,
    connect_timeout: float = 10.0,
    command_timeout: float = 10.0,
    behavior_hint: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The seed's R16 probe, synchronous: `aprobe_rcpt` run to completion.

    Inside a running event loop (a notebook, an async app) it runs on a private
    loop in a helper thread rather than deadlocking the caller's loop; async
    code should simply `await aprobe_rcpt(...)`.
    """
    call = aprobe_rcpt(
        email,
        mx_host,
        helo_domain=helo_domain,
        mail_from=mail_from,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
        behavior_hint=behavior_hint,
        **options,
    )
    return run_sync(call)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, in a helper thread if a loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}  # the thread's value or exception

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="mailprobe-sync", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value
