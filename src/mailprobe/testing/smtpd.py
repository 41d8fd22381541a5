"""A scripted SMTP server on loopback, for tests, benchmarks and `mailprobe demo`.

Hand-written on asyncio streams rather than aiosmtpd: we need what aiosmtpd's
handler API does not expose — a refusing or delayed greeting, replies dribbled
one byte at a time (tarpits), a connection dropped at a chosen command,
per-recipient scripted replies, and a record of every command and of how many
connections were open at once, so a test can prove what did (and did not,
e.g. DATA) reach the server.

Beyond one scripted answer per recipient, a server can act like the real ones a
prober meets: recipient limits per transaction and per session (Outlook's
"452 4.5.3 Too many recipients"), a cap on concurrent connections (a 421 at the
greeting), Gmail's one destination domain per transaction, catch-all, greylisting
of (client IP, MAIL FROM, RCPT) triplets on an injectable clock, and a blocklist
refusal of every RCPT. Politeness is measured by the server itself: every
connection's start, how many were open, and `cap_violations` against the caps the
prober was configured with (`expect_max_concurrency`, `expect_rps`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from mailprobe.testing.background import ThreadedServer
from mailprobe.testing.records import ConnectionRecord, ServerRecord

CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class Scripted:
    """A reply: code and text; a text with newlines goes out as a multi-line reply.

    The text is a str.format template: {hostname}, {rcpt}, {domain} (of the
    recipient) and {client} (the connecting IP) are filled in when it is sent.
    """

    code: int
    text: str = ""

    def render(self, **values: str) -> bytes:
        lines = self.text.format(**values).split("\n") if self.text else [""]
        out = []
        for i, line in enumerate(lines):
            sep = "-" if i < len(lines) - 1 else " "
            out.append(f"{self.code}{sep}{line}".rstrip().encode("utf-8") + CRLF)
        return b"".join(out)


ACCEPT = Scripted(250, "2.1.5 Ok")
USER_UNKNOWN = Scripted(550, "5.1.1 <{rcpt}>: Recipient address rejected: User unknown")
# Defaults for the limits below; texts from the reply corpus (mailprobe.testing.corpus)
# where it has them.
TOO_MANY_RECIPIENTS = Scripted(452, "4.5.3 Too many recipients")  # exchange-onprem-rcpt-452-453-*
TOO_MANY_CONNECTIONS = Scripted(421, "4.7.0 Too many connections, try again later")
TOO_MANY_ERRORS = Scripted(421, "4.7.0 {hostname} Error: too many errors")  # Postfix smtpd
MULTIPLE_DOMAINS = Scripted(  # gmail-rcpt-451-430-multiple-destination-domains (shortened)
    451, "4.3.0 Multiple destination domains per transaction is unsupported. Please try again."
)
GREYLISTED = Scripted(  # postgrey-rcpt-450-420-greylisted-see-help
    450,
    "4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, "
    "see http://postgrey.schweikert.ch/help/{domain}.html",
)
# Postfix smtpd's replies (github:vdukhovni/postfix, postfix/src/smtpd/smtpd.c): an
# address with non-ASCII characters in a transaction whose MAIL did not declare
# SMTPUTF8 (strict_smtputf8 = yes) gets 553 5.6.7 at MAIL or RCPT; a MAIL parameter the
# server does not offer (SMTPUTF8 with smtputf8_enable = no) gets 555 5.5.4.
# Corpus: postfix-rcpt-553-567-must-declare-smtputf8,
# postfix-mail-555-554-unsupported-option-smtputf8.
MUST_DECLARE_SMTPUTF8 = Scripted(553, "5.6.7 Must declare SMTPUTF8 to send unicode address")
UNSUPPORTED_SMTPUTF8 = Scripted(555, "5.5.4 Unsupported option: SMTPUTF8")


def split_path(arg: str) -> tuple[str, list[str]]:
    """A MAIL/RCPT argument ("TO:<path> PARAMS") as (the address inside <>, the
    parameters). A quoted local part (RFC 5321 §4.1.2) may hold spaces, ">" and "@"."""
    rest = arg.partition(":")[2].lstrip()
    if not rest.startswith("<"):
        words = rest.split()
        return (words[0] if words else ""), words[1:]
    i, quoted = 1, False
    while i < len(rest):
        c = rest[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            break
        i += 1
    return rest[1:i], rest[i + 1 :].split()


def with_wait(reply: Scripted, left: float) -> Scripted:
    """A greylisting reply that says how long is left (rounded up, as a retry hint must
    be), as seconds ({wait}, postgrey's %s) or HH:MM:SS ({wait_hms}, milter-greylist)."""
    if "{wait" not in reply.text:
        return reply
    seconds = max(0, math.ceil(left))
    hms = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    text = reply.text.replace("{wait}", str(seconds)).replace("{wait_hms}", hms)
    return Scripted(reply.code, text)


@dataclass
class SessionState:
    """What one client connection has done so far; handlers may read it."""

    peer: str
    tls: bool = False
    helo: str | None = None
    mail_from: str | None = None
    smtputf8: bool = False  # this transaction's MAIL declared SMTPUTF8 (RFC 6531)
    rcpts: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    client_ip: str = ""
    txn_rcpts: int = 0  # RCPTs counted against max_rcpts_per_transaction
    txn_domain: str | None = None  # first recipient domain (one_domain_per_transaction)
    session_rcpts: int = 0  # RCPTs counted against max_rcpts_per_session
    errors: int = 0  # 4xx/5xx replies to commands this session (Postfix's error_count)
    conn: ConnectionRecord | None = None  # this connection in the server's record


RcptHandler = Callable[[str, SessionState], Scripted]


@dataclass
class MXBehavior:
    """How one simulated MX answers. Defaults: a plain, polite Postfix-like server."""

    hostname: str = "mx.sim.example"
    banner: Scripted = Scripted(220, "{hostname} ESMTP ready")
    ehlo: Scripted | None = None  # override the EHLO reply, e.g. 502 to force HELO
    extensions: tuple[str, ...] = ("PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES")
    smtputf8: bool = False
    tls_context: ssl.SSLContext | None = None  # when set, STARTTLS is offered and served
    require_tls: bool = False  # MAIL before STARTTLS gets 530 5.7.0
    mail: Scripted = Scripted(250, "2.1.0 Ok")
    mailboxes: dict[str, Scripted] = field(default_factory=dict)  # lowercased address -> reply
    default_rcpt: Scripted = USER_UNKNOWN
    rcpt_handler: RcptHandler | None = None  # overrides mailboxes/default_rcpt when set
    greeting_delay: float = 0.0
    reply_delay: float = 0.0  # before every reply after the greeting
    dribble: float = 0.0  # seconds between bytes of every reply: a tarpit
    # Network round-trip time: each reply reaches the client this long after the command
    # that asked for it, without holding up the commands behind it (see _Outbox), so a
    # client that waits for every reply pays it per command, and a pipelined group once.
    rtt: float = 0.0
    drop_at: str | None = None  # verb ("MAIL", "RCPT", ...) at which the server hangs up
    # -- limits and policies (None/False: none, today's behaviour) --------------
    # An RCPT past a limit gets the limit's reply and is not counted; RCPTs the
    # server refuses for other reasons (unknown user, greylisting) do count.
    max_rcpts_per_transaction: int | None = None
    too_many_rcpts: Scripted = TOO_MANY_RECIPIENTS
    max_rcpts_per_session: int | None = None
    too_many_rcpts_session: Scripted = TOO_MANY_RECIPIENTS
    max_connections: int | None = None  # concurrent; one more gets `too_many_connections`
    too_many_connections: Scripted = TOO_MANY_CONNECTIONS  # sent instead of the banner
    one_domain_per_transaction: bool = False  # Gmail: a second domain gets `multiple_domains`
    multiple_domains: Scripted = MULTIPLE_DOMAINS
    catch_all: bool = False  # a recipient not in `mailboxes` gets `catch_all_reply`
    catch_all_reply: Scripted = ACCEPT
    greylist_seconds: float | None = None  # (client IP, MAIL FROM, RCPT) triplets
    greylist_reply: Scripted = GREYLISTED  # {wait} / {wait_hms}: the time left, as postgrey's %s
    clock: Callable[[], float] = time.monotonic  # greylisting's clock, injectable for tests
    blocked: Scripted | None = None  # refuse every RCPT with this (a blocklist reply)
    # Postfix's error limits (postconf(5): smtpd_soft_error_limit 10, smtpd_hard_error_limit
    # 20, smtpd_error_sleep_time 1s; https://www.postfix.org/postconf.5.html). Every refused
    # command counts, RCPTs included (smtpd.c: error_count++ when a command's action fails;
    # only delivering mail resets it, which a prober never does). Once the session's errors
    # reach the soft limit, every reply waits `error_sleep` first (smtpd_chat.c); at the
    # hard limit the server answers "421 4.7.0 <host> Error: too many errors" instead of
    # reading the next command, and hangs up. None: no limits.
    soft_error_limit: int | None = None
    hard_error_limit: int | None = None
    error_sleep: float = 1.0
    too_many_errors: Scripted = TOO_MANY_ERRORS
    # -- politeness: the caps the prober promised; the server counts breaches ----
    # The rate caps count RCPT commands (mailprobe.throttle): at most `expect_burst` +
    # `expect_rps` RCPTs in any one-second window, and connection starts at most
    # `expect_connect_rps` (default: expect_rps) + 1 in any one-second window.
    expect_max_concurrency: int | None = None
    expect_rps: float | None = None  # RCPTs per second
    expect_burst: int = 1  # RCPTs that may go at once (THROTTLE_BURST_SECONDS' worth)
    expect_connect_rps: float | None = None  # connection starts per second

    @property
    def offers_smtputf8(self) -> bool:
        """SMTPUTF8 in the EHLO reply: `smtputf8`, or a scripted EHLO that lists it."""
        if self.ehlo is not None:
            return "SMTPUTF8" in self.ehlo.text.upper().split()
        return self.smtputf8

    def rcpt_reply(self, rcpt: str, state: SessionState) -> Scripted:
        """The mailbox's answer (after limits, greylisting and blocking have passed)."""
        if self.rcpt_handler is not None:
            return self.rcpt_handler(rcpt, state)
        reply = self.mailboxes.get(rcpt.lower())
        if reply is not None:
            return reply
        return self.catch_all_reply if self.catch_all else self.default_rcpt


class SimSMTPServer(ThreadedServer):
    """One listening socket answering as `behavior` says: `async with` on the current loop,
    `with` from a background thread, or start/stop."""

    thread_name = "sim-smtpd"

    def __init__(
        self, behavior: MXBehavior | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.behavior = behavior or MXBehavior()
        self.host = host
        self.port = port
        self.record = ServerRecord()
        self.greylist: dict[tuple[str, str, str], float] = {}  # triplet -> first seen (clock)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._outboxes: dict[asyncio.StreamWriter, _Outbox] = {}
        self._states: dict[asyncio.StreamWriter, SessionState] = {}  # for the error limits
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent_starts: deque[float] = deque()
        self._recent_rcpts: deque[float] = deque()

    async def start(self) -> SimSMTPServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for task in list(self._tasks):
                task.cancel()  # e.g. a tarpit still sleeping before its greeting
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> SimSMTPServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- one connection ---------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec, b = self.record, self.behavior
        now = time.monotonic()
        rec.connections += 1
        rec.open_now += 1
        rec.max_open = max(rec.max_open, rec.open_now)
        rec.connect_times.append(now)
        rec.open_counts.append(rec.open_now)
        peername = writer.get_extra_info("peername")
        conn = ConnectionRecord(peer=str(peername), start=now, open_at_start=rec.open_now)
        rec.connection_log.append(conn)
        self._account(conn, now)
        self._writers.add(writer)
        if b.rtt:
            self._outboxes[writer] = _Outbox(writer, b.rtt)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        state = SessionState(peer=str(peername), conn=conn)
        if isinstance(peername, tuple) and peername:
            state.client_ip = str(peername[0])
        try:
            if b.max_connections is not None and rec.open_now > b.max_connections:
                conn.refused = True
                rec.refused_connections += 1
                await self._send(writer, b.too_many_connections, delay=False)
                await self._delivered(writer)
                return
            await asyncio.sleep(b.greeting_delay)
            await self._send(writer, b.banner, delay=False)
            if b.banner.code != 220:
                return
            self._states[writer] = state
            while True:
                if b.hard_error_limit is not None and state.errors >= b.hard_error_limit:
                    rec.error_limit_disconnects += 1
                    await self._send(writer, b.too_many_errors)
                    await self._delivered(writer)
                    return
                line = await reader.readline()
                if not line:
                    return
                if not line.endswith(b"\n") or len(line) > 4096:
                    await self._send(writer, Scripted(500, "5.5.2 Line too long"))
                    await self._delivered(writer)
                    return
                if not await self._dispatch(
                    line.rstrip(b"\r\n").decode("utf-8", "replace"), state, reader, writer
                ):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        except asyncio.CancelledError:
            return  # server stopping; returning keeps 3.11's start_server callback quiet
        finally:
            rec.open_now -= 1
            conn.end = time.monotonic()
            self._writers.discard(writer)
            self._outboxes.pop(writer, None)
            self._states.pop(writer, None)
            if task is not None:
                self._tasks.discard(task)
            writer.transport.abort()

    def _account(self, conn: ConnectionRecord, now: float) -> None:
        """Count a cap violation when this connection breaks the prober's promised caps."""
        b, rec = self.behavior, self.record
        recent = self._recent_starts
        recent.append(now)
        while recent and now - recent[0] >= 1.0:
            recent.popleft()
        broke: list[str] = []
        if b.expect_max_concurrency is not None and rec.open_now > b.expect_max_concurrency:
            broke.append("concurrency")
            rec.concurrency_violations += 1
        connect_rps = b.expect_connect_rps if b.expect_connect_rps is not None else b.expect_rps
        if connect_rps is not None and len(recent) > connect_rps + 1:
            broke.append("rps")
            rec.connect_rate_violations += 1
        if broke:
            conn.violations = tuple(broke)
            rec.cap_violations += 1

    def _account_rcpt(self, now: float) -> None:
        """Count an RCPT beyond the promised rate: expect_burst + expect_rps in a second."""
        b, rec = self.behavior, self.record
        rec.rcpt_times.append(now)
        if b.expect_rps is None:
            return
        recent = self._recent_rcpts
        recent.append(now)
        while recent and now - recent[0] >= 1.0:
            recent.popleft()
        if len(recent) > b.expect_burst + math.floor(b.expect_rps * 1.05 + 1e-9):
            rec.rcpt_rate_violations += 1
            rec.cap_violations += 1

    def _rcpt_answer(self, rcpt: str, state: SessionState) -> Scripted:
        """Policy first (block, limits, domains, greylisting), then the mailbox."""
        b = self.behavior
        if b.blocked is not None:
            return b.blocked
        if b.max_rcpts_per_session is not None and state.session_rcpts >= b.max_rcpts_per_session:
            return b.too_many_rcpts_session
        if (
            b.max_rcpts_per_transaction is not None
            and state.txn_rcpts >= b.max_rcpts_per_transaction
        ):
            return b.too_many_rcpts
        domain = rcpt.rpartition("@")[2].lower()
        if b.one_domain_per_transaction:
            if state.txn_domain is None:
                state.txn_domain = domain
            elif domain != state.txn_domain:
                return b.multiple_domains
        state.txn_rcpts += 1
        state.session_rcpts += 1
        if b.greylist_seconds is not None:
            sender = (state.mail_from or "").partition(":")[2].strip().split(" ")[0]
            key = (state.client_ip, sender.strip("<>").lower(), rcpt.lower())
            now = b.clock()
            first = self.greylist.setdefault(key, now)
            if now - first < b.greylist_seconds:
                return with_wait(b.greylist_reply, b.greylist_seconds - (now - first))
        return b.rcpt_reply(rcpt, state)

    async def _dispatch(
        self,
        line: str,
        state: SessionState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        b, rec = self.behavior, self.record
        rec.commands.append(line)
        state.commands.append(line)
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if b.drop_at and verb == b.drop_at.upper():
            writer.transport.abort()
            return False
        if verb == "EHLO":
            state.helo = arg
            if b.ehlo is not None:
                reply = b.ehlo
                if b.tls_context is not None and not state.tls and "STARTTLS" not in reply.text:
                    reply = Scripted(reply.code, f"{reply.text}\nSTARTTLS")
                await self._send(writer, reply)
                return True
            exts = list(b.extensions)
            if b.smtputf8:
                exts.append("SMTPUTF8")
            if b.tls_context is not None and not state.tls:
                exts.append("STARTTLS")
            await self._send(writer, Scripted(250, "\n".join([b.hostname, *exts])))
        elif verb == "HELO":
            state.helo = arg
            await self._send(writer, Scripted(250, b.hostname))
        elif verb == "STARTTLS" and b.tls_context is not None and not state.tls:
            await self._send(writer, Scripted(220, "2.0.0 Ready to start TLS"))
            await self._delivered(writer)
            await writer.start_tls(b.tls_context)
            state.tls, state.helo = True, None
        elif verb == "MAIL":
            if b.require_tls and not state.tls:
                await self._send(writer, Scripted(530, "5.7.0 Must issue a STARTTLS command first"))
                return True
            sender, params = split_path(arg)
            declared = any(p.upper() == "SMTPUTF8" for p in params)
            if declared and not b.offers_smtputf8:
                await self._send(writer, UNSUPPORTED_SMTPUTF8)
                return True
            if not declared and not sender.isascii():
                await self._send(writer, MUST_DECLARE_SMTPUTF8)
                return True
            state.mail_from, state.rcpts, state.smtputf8 = arg, [], declared
            state.txn_rcpts, state.txn_domain = 0, None
            if 200 <= b.mail.code < 300:
                rec.transactions += 1
                if state.conn is not None:
                    state.conn.transactions += 1
            await self._send(writer, b.mail)
        elif verb == "RCPT":
            if state.mail_from is None:
                await self._send(writer, Scripted(503, "5.5.1 Error: need MAIL command"))
                return True
            rcpt = split_path(arg)[0]
            state.rcpts.append(rcpt)
            rec.rcpts += 1
            self._account_rcpt(time.monotonic())
            if state.conn is not None:
                state.conn.rcpts += 1
            if not rcpt.isascii() and not state.smtputf8:
                await self._send(writer, MUST_DECLARE_SMTPUTF8, rcpt=rcpt)
                return True
            await self._send(writer, self._rcpt_answer(rcpt, state), rcpt=rcpt)
        elif verb == "RSET":
            state.mail_from, state.rcpts, state.smtputf8 = None, [], False
            state.txn_rcpts, state.txn_domain = 0, None
            await self._send(writer, Scripted(250, "2.0.0 Ok"))
        elif verb == "NOOP":
            await self._send(writer, Scripted(250, "2.0.0 Ok"))
        elif verb == "QUIT":
            await self._send(writer, Scripted(221, "2.0.0 Bye"))
            await self._delivered(writer)
            return False
        elif verb in {"DATA", "BDAT"}:
            rec.data_received = True  # a test asserts this never happens
            await self._send(writer, Scripted(554, "5.5.1 This simulated server takes no DATA"))
        else:
            await self._send(writer, Scripted(502, "5.5.2 Error: command not recognized"))
        return True

    async def _send(
        self, writer: asyncio.StreamWriter, reply: Scripted, *, delay: bool = True, rcpt: str = ""
    ) -> None:
        b = self.behavior
        if delay and b.reply_delay:
            await asyncio.sleep(b.reply_delay)
        state = self._states.get(writer)
        if state is not None and (b.soft_error_limit, b.hard_error_limit) != (None, None):
            if b.soft_error_limit is not None and state.errors >= b.soft_error_limit:
                self.record.error_delays += 1
                await asyncio.sleep(b.error_sleep)
            if reply.code >= 400:
                state.errors += 1
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        domain = rcpt.rpartition("@")[2]
        data = reply.render(hostname=b.hostname, rcpt=rcpt, domain=domain, client=client)
        outbox = self._outboxes.get(writer)
        if outbox is not None:
            outbox.send(data)
        elif b.dribble:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(b.dribble)
        else:
            writer.write(data)
            await writer.drain()

    async def _delivered(self, writer: asyncio.StreamWriter) -> None:
        """Wait until every reply sent so far has reached the client (see `rtt`)."""
        outbox = self._outboxes.get(writer)
        if outbox is not None:
            await outbox.delivered()


class _Outbox:
    """Replies in flight on a connection with a round-trip time: each is written `rtt`
    after it was sent (in order), while the server goes on reading commands."""

    def __init__(self, writer: asyncio.StreamWriter, rtt: float) -> None:
        self.writer, self.rtt = writer, rtt
        self.last = 0.0  # when the latest reply reaches the client (loop time)

    def send(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.last = max(loop.time() + self.rtt, self.last)
        loop.call_at(self.last, self._write, data)

    def _write(self, data: bytes) -> None:
        if not self.writer.transport.is_closing():
            self.writer.write(data)

    async def delivered(self) -> None:
        await asyncio.sleep(max(0.0, self.last - asyncio.get_running_loop().time()))
        await self.writer.drain()


@contextlib.contextmanager
def serve_in_thread(
    behavior: MXBehavior | None = None, host: str = "127.0.0.1"
) -> Iterator[SimSMTPServer]:
    """Run a SimSMTPServer on its own loop in a thread, for sync callers and subprocesses."""
    with SimSMTPServer(behavior, host=host) as server:
        yield server
