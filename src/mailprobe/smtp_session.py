"""One SMTP connection to one MX: EHLO, STARTTLS, then any number of MAIL/RCPT rounds.

`SMTPSession` is the protocol the seed's probe (`mailprobe.smtp`) and the bulk engine
share. `mailprobe.smtp_wire` does the wire work (reply parsing, multi-line replies,
TLS upgrade, pipelining; see there why not aiosmtplib). MAIL and RCPT carry address
bytes we build ourselves: every byte we send has passed `mailprobe.address` and a
last CR/LF/NUL check in `_line`. Every reply is matched to its command
(`POSITIVE_REPLIES`): one that cannot answer it puts the session out of step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import ssl
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mailprobe import identity
from mailprobe.address import EmailAddress, check_hostname
from mailprobe.classify import parse_enhanced
from mailprobe.egress import ProxyURL
from mailprobe.smtp_wire import SMTPWire, WireError, WireFailure

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
    OUT_OF_STEP = "out_of_step"  # a reply that cannot answer the command it was read for
    PROXY = "proxy_error"  # the route's SOCKS proxy failed us: nothing about the MX


# RFC 5321 §4.3.2: the positive replies each command can get. Any 4yz or 5yz may answer
# any command (421 closing, 5xx refusals), so only positive codes tell a reply that
# belongs to another command: a 220 or 354 read for RCPT, a 250 read for QUIT.
POSITIVE_REPLIES: dict[str, frozenset[int]] = {
    "greeting": frozenset({220}),
    "ehlo": frozenset({250}),
    "starttls": frozenset({220}),
    "mail": frozenset({250}),
    "rcpt": frozenset({250, 251, 252}),
    "rset": frozenset({250}),
    "quit": frozenset({221}),
}


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
    proxy: ProxyURL | None = None  # the route's SOCKS proxy (mailprobe.egress)
    transcript: list[str] = field(default_factory=list)
    tls: bool = False
    smtputf8: bool = False
    pipelining: bool = False  # the server offers RFC 2920 PIPELINING
    stage: str = "connect"
    _wire: SMTPWire | None = field(default=None, repr=False)
    _broken: bool = field(default=False, repr=False)  # a reply is lost: no QUIT, just drop
    out_of_step: bool = False  # a reply was read that cannot answer its command
    _quit_sent: bool = field(default=False, repr=False)  # QUIT went out in a pipelined group

    async def open(self) -> Reply:
        """Connect, read the greeting, EHLO (HELO on 5xx), STARTTLS when offered.

        Raises StageRefused for a 4xx/5xx at any of these steps and SessionError
        when there is no reply at all.
        """
        self.stage = "connect"
        self.helo_domain = check_hostname(self.helo_domain, "helo_domain")
        target = f"{self.mx_host} ({self.connect_to})" if self.connect_to else self.mx_host
        via = f" via proxy {self.proxy.shown}" if self.proxy is not None else ""
        self._log(f"* connect {target} port {self.port}{via}")
        with self._errors():
            self._wire = await SMTPWire.connect(
                self.connect_to or self.mx_host,
                self.port,
                timeout=self.connect_timeout,
                source_address=self.source_address,
                proxy=self.proxy,
                server_name=self.mx_host,
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
        """Send (stage, command words) as one group; yield the replies once they are all in.

        RFC 2920 lets MAIL, RCPT and RSET be grouped; the replies come in order, so
        the caller pairs them with what it sent. The whole group is read before any
        reply is handed over, so a group whose replies turn out to be out of step (a
        code that cannot answer its command, or a reply more than the commands) hands
        over none of them: SessionError(OUT_OF_STEP). A connection that fails part way
        still hands over the replies read before the failure, then raises. Each reply
        waits at most `command_timeout`.
        """
        lines = [self._line(stage, words) for stage, words in commands]
        self._in_step(commands[0][0])
        for line in lines:
            self._log("C: " + line.decode(errors="replace"))
        self._quit_sent |= any(stage == "quit" for stage, _ in commands)
        wire = self._require()
        self.stage = commands[0][0]
        with self._errors():
            await wire.send(*lines, timeout=self.command_timeout)
        replies: list[Reply] = []
        failure: SessionError | None = None
        for stage, _ in commands:
            self.stage = stage
            try:
                replies.append(await self._read(stage, self.command_timeout))
            except SessionError as exc:
                if exc.kind is ErrorKind.OUT_OF_STEP:
                    raise
                failure = exc
                break
        if failure is None and self._quit_sent:
            await asyncio.sleep(0)  # let bytes already received reach the buffer
            self._in_step("quit")  # nothing may follow QUIT's 221: no extra replies
        for reply in replies:
            yield reply
        if failure is not None:
            raise failure

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
                self._in_step("quit")
                self._log("C: QUIT")
                await wire.send(b"QUIT", timeout=COURTESY_TIMEOUT)
                raw = await wire.read_reply(COURTESY_TIMEOUT)
                self._reply("quit", raw.code, raw.message)  # a 250 here: out of step
            await wire.close(COURTESY_TIMEOUT)
        except (WireError, OSError, SessionError):
            pass  # out_of_step says whether what came before can be trusted
        finally:
            self.close_transport()

    async def linger(self, timeout: float) -> None:
        """End a connection to a server that stopped answering in time: no QUIT (the
        stream is out of step), a half-close, and wait (at most `timeout`) until the
        server hangs up: until then it still counts the connection (see SMTPWire.linger)."""
        wire, self._wire = self._wire, None
        if wire is not None:
            await wire.linger(timeout)

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
        self._in_step(stage)
        self._log("C: " + line.decode(errors="replace"))
        wire = self._require()
        with self._errors():
            await wire.send(line, timeout=timeout or self.command_timeout)
            raw = await wire.read_reply(timeout or self.command_timeout)
        return self._reply(stage, raw.code, raw.message), raw.lines

    def _line(self, stage: str, words: Sequence[bytes]) -> bytes:
        line = b" ".join(words)
        if b"\r" in line or b"\n" in line or b"\x00" in line:  # last defence; see address.py
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
        expected = POSITIVE_REPLIES.get(stage)
        if expected is not None and code < 400 and code not in expected:
            self._out_of_step(stage, f"reply {code} cannot answer {stage.upper()}")
        return reply

    def _out_of_step(self, stage: str, why: str) -> None:
        """The replies no longer match the commands: nothing more this session says about
        an address can be trusted, and the stream is dropped, not QUIT politely."""
        self._broken = True
        self.out_of_step = True
        self._log(f"* out of step: {why}")
        raise SessionError(ErrorKind.OUT_OF_STEP, stage, f"replies out of step: {why}")

    def _in_step(self, stage: str) -> None:
        """Before a command: nothing may wait unread (a reply to no command of ours)."""
        if self._wire is not None and self._wire.has_unread():
            self._out_of_step(stage, "the server sent a reply nobody asked for")

    def _log(self, line: str) -> None:
        self.transcript.append(line)


_ERROR_KINDS = {
    WireFailure.TIMEOUT: ErrorKind.TIMEOUT,
    WireFailure.CLOSED: ErrorKind.DISCONNECTED,
    WireFailure.CONNECT: ErrorKind.CONNECTION_FAILED,
    WireFailure.TLS: ErrorKind.TLS_FAILED,
    WireFailure.PROTOCOL: ErrorKind.PROTOCOL,
    WireFailure.PROXY: ErrorKind.PROXY,
}
