"""One SMTP conversation with one MX: EHLO, STARTTLS, MAIL FROM, RCPT TO. Never DATA.

`SMTPSession` is the protocol for one connection and can carry several RCPTs
(the engine reuses it for bulk work). `aprobe_rcpt` is the seed's single probe
built on it, and `probe_rcpt` is its thin synchronous face.

`mailprobe.smtp_wire` does the wire work (reply parsing, multi-line replies, TLS
upgrade, pipelining; see there why not aiosmtplib). MAIL and RCPT carry address
bytes we build ourselves: every byte we send has passed `mailprobe.address` and
a last CR/LF/NUL check in `_line`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from mailprobe import identity
from mailprobe.address import EmailAddress, InvalidAddress, check_hostname, parse_address
from mailprobe.behavior import record_mx_probe
from mailprobe.classify import Reason, classify_error, parse_enhanced
from mailprobe.results import Outcome
from mailprobe.smtp_wire import SMTPWire, WireError, WireFailure

log = logging.getLogger(__name__)
T = TypeVar("T")

# QUIT and RSET are courtesy: never let them hold a finished probe for long.
COURTESY_TIMEOUT = 5.0


class ErrorKind(StrEnum):
    """Why a probe ended without a reply to read."""

    TIMEOUT = "timeout"
    CONNECTION_FAILED = "connection_failed"
    DISCONNECTED = "disconnected"
    TLS_FAILED = "tls_failed"
    BAD_INPUT = "bad_input"
    PROTOCOL = "protocol"


@dataclass(frozen=True, slots=True)
class Reply:
    stage: str
    code: int
    message: str

    @property
    def enhanced(self) -> str | None:
        return parse_enhanced(self.message)[0]

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400


class SessionError(Exception):
    """The conversation ended without a reply: timeout, dropped connection, TLS failure."""

    def __init__(self, kind: ErrorKind, stage: str, detail: str) -> None:
        super().__init__(f"{kind.value} at {stage}: {detail}")
        self.kind = kind
        self.stage = stage


class StageRefused(Exception):
    """A stage before RCPT got a 4xx/5xx reply: that reply is the probe's result."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.stage} refused: {reply.code} {reply.message}")
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    command: float


def effective_timeouts(
    connect_timeout: float, command_timeout: float, hint: Mapping[str, Any] | None
) -> Timeouts:
    """The seed's rule for adapting time budgets to what we know of an MX.

    * hint["connect_timeout"] / hint["command_timeout"], when present, are used
      as given (clamped to 1..600 s): the engine sets them, e.g. to retry a slow
      MX with a longer, RFC 5321-sized budget.
    * otherwise, hint["tarpit"] or hint["slow"] halve both budgets (never below
      2 s): a server known to stall is not worth the full wait on a first pass.
    * otherwise the configured budgets stand.
    """
    if not hint:
        return Timeouts(connect_timeout, command_timeout)

    def clamp(value: Any, default: float) -> float:
        try:
            return min(max(float(value), 1.0), 600.0)
        except (TypeError, ValueError):
            return default

    if "connect_timeout" in hint or "command_timeout" in hint:
        return Timeouts(
            clamp(hint.get("connect_timeout", connect_timeout), connect_timeout),
            clamp(hint.get("command_timeout", command_timeout), command_timeout),
        )
    if hint.get("tarpit") or hint.get("slow"):
        return Timeouts(
            min(connect_timeout, max(2.0, connect_timeout / 2)),
            min(command_timeout, max(2.0, command_timeout / 2)),
        )
    return Timeouts(connect_timeout, command_timeout)


@functools.lru_cache(maxsize=8)
def make_tls_context(verify: bool = False, cafile: str | None = None) -> ssl.SSLContext:
    """Opportunistic TLS by default (RFC 7435): MX certificates are often self-signed
    or name another host, and refusing them would only push us back to plaintext.

    Cached: loading the system's CA store costs tens of milliseconds, and one context
    serves every connection."""
    context = ssl.create_default_context(cafile=cafile)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _check_host(mx_host: str) -> str:
    try:
        return str(ipaddress.ip_address(mx_host.strip()))
    except ValueError:
        return check_hostname(mx_host, "mx_host")


@dataclass
class SMTPSession:
    """One connection to one MX. Open it, then run any number of MAIL/RCPT rounds.

    Every reply and command is kept in `transcript`, the evidence a result is
    stored with. Each command waits at most `command_timeout`; the caller bounds
    the whole session with its own deadline. When the server offers PIPELINING,
    `pipeline` sends a transaction's commands as one group (RFC 2920).
    """

    mx_host: str
    helo_domain: str
    port: int = 25
    connect_to: str | None = None  # an IP for mx_host, resolved by our own resolver
    connect_timeout: float = 10.0
    command_timeout: float = 10.0
    source_address: str | None = None
    starttls: bool = True
    tls_context: ssl.SSLContext | None = None
    transcript: list[str] = field(default_factory=list)
    tls: bool = False
    smtputf8: bool = False
    pipelining: bool = False  # the server offers RFC 2920 PIPELINING
    stage: str = "connect"
    _wire: SMTPWire | None = field(default=None, repr=False)
    _broken: bool = field(default=False, repr=False)  # a reply is lost: no QUIT, just drop
    _quit_sent: bool = field(default=False, repr=False)  # QUIT went out in a pipelined group

    async def open(self) -> Reply:
        """Connect, read the greeting, EHLO (HELO on 5xx), STARTTLS when offered.

        Raises StageRefused for a 4xx/5xx at any of these steps and SessionError
        when there is no reply at all.
        """
        self.stage = "connect"
        self.helo_domain = check_hostname(self.helo_domain, "helo_domain")
        target = f"{self.mx_host} ({self.connect_to})" if self.connect_to else self.mx_host
        self._log(f"* connect {target} port {self.port}")
        with self._errors():
            self._wire = await SMTPWire.connect(
                self.connect_to or self.mx_host,
                self.port,
                timeout=self.connect_timeout,
                source_address=self.source_address,
            )
        identity.check_dial(self._wire.peer_ip, self.helo_domain)
        self.stage = "greeting"
        greeting = await self._read("greeting", self.connect_timeout)
        if not 200 <= greeting.code < 300:
            raise StageRefused(greeting)
        extensions = await self._hello()
        if self.starttls and "STARTTLS" in extensions:
            await self._starttls()
        return greeting

    async def _hello(self) -> set[str]:
        """EHLO (HELO when EHLO gets a 5xx); the extensions the server offers."""
        self.stage = "ehlo"
        reply, lines = await self._exchange("ehlo", b"EHLO", self.helo_domain.encode())
        if 500 <= reply.code < 600:
            reply, lines = await self._exchange("ehlo", b"HELO", self.helo_domain.encode())
            lines = ()  # HELO offers no extensions
        if not 200 <= reply.code < 300:
            raise StageRefused(reply)
        extensions = {line.split()[0].upper() for line in lines[1:] if line.split()}
        self.smtputf8 = "SMTPUTF8" in extensions
        self.pipelining = "PIPELINING" in extensions
        return extensions

    async def _starttls(self) -> None:
        self.stage = "starttls"
        reply = await self._command("starttls", b"STARTTLS")
        if reply.code != 220:
            return  # RFC 3207: a refused STARTTLS leaves the plaintext session usable
        wire = self._require()
        with self._errors():
            await wire.start_tls(
                self.tls_context or make_tls_context(), self.mx_host, self.command_timeout
            )
        self.tls = True
        await self._hello()

    async def mail(self, mail_from: str) -> Reply:
        """MAIL FROM. A refusal raises StageRefused: RCPT cannot follow it."""
        self.stage = "mail"
        reply = await self._command("mail", *self.mail_command(mail_from))
        if not reply.ok:
            raise StageRefused(reply)
        return reply

    async def rcpt(self, address: EmailAddress) -> Reply:
        """RCPT TO: the answer we came for, whatever its code."""
        self.stage = "rcpt"
        return await self._command("rcpt", *self.rcpt_command(address))

    async def rset(self) -> Reply:
        self.stage = "rset"
        return await self._command("rset", b"RSET", timeout=COURTESY_TIMEOUT)

    def mail_command(self, mail_from: str) -> tuple[bytes, ...]:
        if self._wire is not None:
            identity.check_dial(self._wire.peer_ip, self.helo_domain, mail_from)
        params = (b"SMTPUTF8",) if self.smtputf8 else ()
        return (b"MAIL", b"FROM:<" + mail_from.encode() + b">", *params)

    @staticmethod
    def rcpt_command(address: EmailAddress) -> tuple[bytes, ...]:
        return (b"RCPT", b"TO:<" + address.wire.encode() + b">")

    async def pipeline(
        self, commands: Sequence[tuple[str, tuple[bytes, ...]]]
    ) -> AsyncGenerator[Reply, None]:
        """Send (stage, command words) as one group and yield each reply as it comes.

        RFC 2920 lets MAIL, RCPT and RSET be grouped; the replies come in order, so
        the caller pairs them with what it sent and keeps every reply read before a
        failure. Each reply waits at most `command_timeout`.
        """
        lines = [self._line(stage, words) for stage, words in commands]
        for line in lines:
            self._log("C: " + line.decode(errors="replace"))
        self._quit_sent |= any(stage == "quit" for stage, _ in commands)
        wire = self._require()
        self.stage = commands[0][0]
        with self._errors():
            await wire.send(*lines, timeout=self.command_timeout)
        for stage, _ in commands:
            self.stage = stage
            yield await self._read(stage, self.command_timeout)

    async def close(self) -> None:
        """QUIT politely if the connection is still up, then drop it, always."""
        wire = self._wire
        if wire is None:
            return
        if self._broken:  # a timed-out or garbled exchange: the stream is out of step
            self.close_transport()
            return
        try:
            if not self._quit_sent:
                self._log("C: QUIT")
                await wire.send(b"QUIT", timeout=COURTESY_TIMEOUT)
                await wire.read_reply(COURTESY_TIMEOUT)
            await wire.close(COURTESY_TIMEOUT)
        except (WireError, OSError):
            pass
        finally:
            self.close_transport()

    def close_transport(self) -> None:
        """Drop the connection at once, without a word to the server."""
        if self._wire is not None:
            self._wire.abort()
            self._wire = None

    # -- plumbing ------------------------------------------------------------

    async def _command(self, stage: str, *words: bytes, timeout: float | None = None) -> Reply:
        reply, _ = await self._exchange(stage, *words, timeout=timeout)
        return reply

    async def _exchange(
        self, stage: str, *words: bytes, timeout: float | None = None
    ) -> tuple[Reply, tuple[str, ...]]:
        line = self._line(stage, words)
        self._log("C: " + line.decode(errors="replace"))
        wire = self._require()
        with self._errors():
            await wire.send(line, timeout=timeout or self.command_timeout)
            raw = await wire.read_reply(timeout or self.command_timeout)
        return self._reply(stage, raw.code, raw.message), raw.lines

    def _line(self, stage: str, words: Sequence[bytes]) -> bytes:
        line = b" ".join(words)
        if any(c in line for c in b"\r\n\x00"):  # last line of defence; see address.py
            raise SessionError(ErrorKind.BAD_INPUT, stage, "command contains CR, LF or NUL")
        return line

    async def _read(self, stage: str, timeout: float) -> Reply:
        wire = self._require()
        with self._errors():
            raw = await wire.read_reply(timeout)
        return self._reply(stage, raw.code, raw.message)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn the wire's failures into SessionError at the current stage."""
        try:
            yield
        except WireError as exc:
            self._broken = True
            raise SessionError(_ERROR_KINDS[exc.failure], self.stage, str(exc)) from None

    def _require(self) -> SMTPWire:
        if self._wire is None:
            raise SessionError(ErrorKind.DISCONNECTED, self.stage, "session is not open")
        return self._wire

    def _reply(self, stage: str, code: int, message: str) -> Reply:
        reply = Reply(stage, code, message)
        lines = message.splitlines() or [""]
        for i, line in enumerate(lines):
            self._log(f"S: {code}{'-' if i < len(lines) - 1 else ' '}{line}")
        return reply

    def _log(self, line: str) -> None:
        self.transcript.append(line)


_ERROR_KINDS = {
    WireFailure.TIMEOUT: ErrorKind.TIMEOUT,
    WireFailure.CLOSED: ErrorKind.DISCONNECTED,
    WireFailure.CONNECT: ErrorKind.CONNECTION_FAILED,
    WireFailure.TLS: ErrorKind.TLS_FAILED,
    WireFailure.PROTOCOL: ErrorKind.PROTOCOL,
}


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
) -> Outcome:
    """Probe one address at one MX: one connection, one RCPT, the typed outcome.

    Never raises for a server's behaviour: every outcome, a refusal, a timeout
    or a dropped connection, is an Outcome. Bad input is one too (error_kind
    bad_input) and nothing is sent. `connect_to` is the IP to dial when the
    caller resolved `mx_host` itself; `mx_host` still names the server.
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

    timeouts = effective_timeouts(connect_timeout, command_timeout, behavior_hint)
    budget = deadline or (timeouts.connect + 6 * timeouts.command)
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
