"""A scripted SMTP server on loopback, for tests, benchmarks and `mailprobe demo`.

Hand-written on asyncio streams rather than aiosmtpd: we need what aiosmtpd's
handler API does not expose — a refusing or delayed greeting, replies dribbled
one byte at a time (tarpits), a connection dropped at a chosen command,
per-recipient scripted replies, and a record of every command and of how many
connections were open at once, so a test can prove what did (and did not,
e.g. DATA) reach the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class Scripted:
    """A reply: code and text; a text with newlines goes out as a multi-line reply."""

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


@dataclass
class SessionState:
    """What one client connection has done so far; handlers may read it."""

    peer: str
    tls: bool = False
    helo: str | None = None
    mail_from: str | None = None
    rcpts: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)


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
    drop_at: str | None = None  # verb ("MAIL", "RCPT", ...) at which the server hangs up

    def rcpt_reply(self, rcpt: str, state: SessionState) -> Scripted:
        if self.rcpt_handler is not None:
            return self.rcpt_handler(rcpt, state)
        return self.mailboxes.get(rcpt.lower(), self.default_rcpt)


@dataclass
class ServerRecord:
    """Everything the server saw, across connections."""

    connections: int = 0
    open_now: int = 0
    max_open: int = 0
    connect_times: list[float] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    data_received: bool = False

    def verbs(self) -> list[str]:
        return [c.split(" ", 1)[0].upper() for c in self.commands]


class SimSMTPServer:
    """One listening socket answering as `behavior` says. Use `async with` or start/stop."""

    def __init__(
        self, behavior: MXBehavior | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.behavior = behavior or MXBehavior()
        self.host = host
        self.port = port
        self.record = ServerRecord()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> SimSMTPServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
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
        rec.connections += 1
        rec.open_now += 1
        rec.max_open = max(rec.max_open, rec.open_now)
        rec.connect_times.append(time.monotonic())
        self._writers.add(writer)
        state = SessionState(peer=str(writer.get_extra_info("peername")))
        try:
            await asyncio.sleep(b.greeting_delay)
            await self._send(writer, b.banner, delay=False)
            if b.banner.code != 220:
                return
            while True:
                line = await reader.readline()
                if not line:
                    return
                if not line.endswith(b"\n") or len(line) > 4096:
                    await self._send(writer, Scripted(500, "5.5.2 Line too long"))
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
            self._writers.discard(writer)
            writer.transport.abort()

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
                await self._send(writer, b.ehlo)
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
            await writer.start_tls(b.tls_context)
            state.tls, state.helo = True, None
        elif verb == "MAIL":
            if b.require_tls and not state.tls:
                await self._send(writer, Scripted(530, "5.7.0 Must issue a STARTTLS command first"))
                return True
            state.mail_from, state.rcpts = arg, []
            await self._send(writer, b.mail)
        elif verb == "RCPT":
            if state.mail_from is None:
                await self._send(writer, Scripted(503, "5.5.1 Error: need MAIL command"))
                return True
            rcpt = arg.partition(":")[2].strip().split(" ")[0].strip("<>")
            state.rcpts.append(rcpt)
            await self._send(writer, b.rcpt_reply(rcpt, state), rcpt=rcpt)
        elif verb == "RSET":
            state.mail_from, state.rcpts = None, []
            await self._send(writer, Scripted(250, "2.0.0 Ok"))
        elif verb == "NOOP":
            await self._send(writer, Scripted(250, "2.0.0 Ok"))
        elif verb == "QUIT":
            await self._send(writer, Scripted(221, "2.0.0 Bye"))
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
        data = reply.render(hostname=b.hostname, rcpt=rcpt)
        if b.dribble:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(b.dribble)
        else:
            writer.write(data)
            await writer.drain()


@contextlib.contextmanager
def serve_in_thread(
    behavior: MXBehavior | None = None, host: str = "127.0.0.1"
) -> Iterator[SimSMTPServer]:
    """Run a SimSMTPServer on its own loop in a thread, for sync callers and subprocesses."""
    loop = asyncio.new_event_loop()
    server = SimSMTPServer(behavior, host=host)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="sim-smtpd", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("simulated SMTP server did not start")
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
