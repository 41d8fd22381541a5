"""The SMTP client's wire: one TCP (or TLS) connection, commands out, replies in.

Hand-written on asyncio streams, in place of aiosmtplib, for one gap: aiosmtplib
cannot pipeline (RFC 2920). Its protocol keeps one parsed reply at a time and drops
the bytes that arrive while that reply waits to be read (`SMTPProtocol.data_received`),
so a group of commands written at once loses replies. Pipelining turns a session of
20 RCPTs from about 32 round trips into 3, which on a real network is most of a
session's time (and a per-MX concurrency cap makes session time throughput).

What it guarantees, so the session layer can rely on it:

* every wait is bounded: connect, each reply, the TLS handshake, closing;
* replies are parsed strictly (a 3-digit code, "-" continuation, one code per reply)
  within limits (line length, lines per reply), so a hostile server cannot make us
  buffer without end; a reply is handed over as aiosmtplib did: its lines without
  the code, joined by newlines;
* failures are `WireError`s with a kind (timeout, closed, refused connection, TLS,
  protocol) for the session to turn into stage-aware errors.

Nothing here knows MAIL or RCPT: commands are bytes the session has checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
import ssl
from dataclasses import dataclass
from enum import StrEnum

from mailprobe.egress import ProxyURL

MAX_LINE = 4096  # RFC 5321 §4.5.3.1.5 says 512 for a reply line; real servers exceed it
MAX_LINES = 200  # lines in one reply (EHLO lists run to a few dozen)
STREAM_LIMIT = 64 * 1024  # asyncio's buffer for one line, above MAX_LINE so we can say why
# RFC 5321 §4.2: a reply code is three ASCII digits, the first 2-5, then SP, "-" or the line's
# end. Matched on the raw bytes: str.isdigit() would take "٢٥٠" or "²⁵⁰" for a code.
_REPLY_HEAD = re.compile(rb"([2-5][0-9][0-9])([ -]|\r?\n)")
PROXY_CHECK_TIMEOUT = 3.0  # seconds to see whether a proxy answers at all
# RFC 1928 §6 replies that speak of the MX, not the proxy: host unreachable, connection
# refused, TTL expired.
SOCKS5_TARGET_FAILURES = frozenset({4, 5, 6})
# Control characters a server should not send in reply text (NUL first of all): escaped, so
# the text stays printable and storable (PostgreSQL refuses NUL in text).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def use_fast_event_loop() -> str:
    """Run the event loops this process creates on uvloop when it is installed (the `fast`
    extra) and MAILPROBE_UVLOOP is not 0/false/no/off; return the loop's name.

    For a face to call once before `asyncio.run`: bulk verify spends much of its CPU in the
    event loop (a wake-up per reply, per timer), which uvloop runs in C."""
    if os.environ.get("MAILPROBE_UVLOOP", "").strip().lower() in {"0", "false", "no", "off"}:
        return "asyncio"
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


class WireFailure(StrEnum):
    TIMEOUT = "timeout"
    CLOSED = "closed"  # the server closed or reset the connection
    CONNECT = "connect"  # no connection at all (refused, unreachable)
    PROXY = "proxy"  # the SOCKS proxy refused us, failed or is unreachable: not the MX
    TLS = "tls"
    PROTOCOL = "protocol"  # not an SMTP reply


class WireError(Exception):
    def __init__(self, failure: WireFailure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure


@dataclass(frozen=True, slots=True)
class WireReply:
    code: int
    message: str  # the reply's lines without their codes, joined by "\n"
    lines: tuple[str, ...]  # the same lines, for the EHLO keyword list


class SMTPWire:
    """One connection. Use `connect`, then `send` and `read_reply`; `close` always."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float,
        source_address: str | None = None,
        proxy: ProxyURL | None = None,
        server_name: str | None = None,
    ) -> SMTPWire:
        """A connection to `host`:`port`, directly or through a SOCKS `proxy` (then
        `server_name`, the MX's name, is what a socks5h/socks4a proxy resolves)."""
        if proxy is not None:
            return await cls._through(proxy, server_name or host, host, port, timeout)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    limit=STREAM_LIMIT,
                    local_addr=(source_address, 0) if source_address else None,
                )
        except TimeoutError:
            raise WireError(
                WireFailure.TIMEOUT, f"no connection to {host}:{port} within {timeout:g}s"
            ) from None
        except OSError as exc:
            raise WireError(WireFailure.CONNECT, f"{host}:{port}: {exc}") from None
        return cls(reader, writer)

    @classmethod
    async def _through(
        cls, proxy: ProxyURL, name: str, ip: str, port: int, timeout: float
    ) -> SMTPWire:
        """The proxy's CONNECT with python-socks, then our own stream on its socket, so
        STARTTLS upgrades that connection like a direct one.

        Whose failure it is decides what it means: the proxy unreachable, refusing us, or
        failing on its side is a PROXY failure (the route's, never the address's); the
        proxy saying the MX refused or cannot be reached (SOCKS5 replies 4, 5, 6, RFC 1928
        §6) is the MX's, as it would be directly. A CONNECT that times out is either: the
        proxy is then dialled alone for a moment to tell which (a proxy whose own network
        blocks port 25 also stalls or fails here: Reacher's users met both,
        reacherhq/check-if-email-exists#1276 and #1523)."""
        from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
        from python_socks.async_.asyncio import Proxy

        kind = ProxyType.SOCKS5 if proxy.version == 5 else ProxyType.SOCKS4
        client = Proxy(kind, proxy.host, proxy.port, proxy.username, proxy.password,
                       rdns=proxy.remote_dns)  # fmt: skip
        target = name if proxy.remote_dns else ip
        via = f"via proxy {proxy.shown}"
        try:
            sock = await client.connect(target, port, timeout=timeout)
        except ProxyTimeoutError:
            if await _answers(proxy, min(timeout, PROXY_CHECK_TIMEOUT)):
                raise WireError(
                    WireFailure.TIMEOUT,
                    f"no connection to {target}:{port} {via} within {timeout:g}s",
                ) from None
            raise WireError(WireFailure.PROXY, f"proxy {proxy.shown} does not answer") from None
        except ProxyConnectionError as exc:
            raise WireError(WireFailure.PROXY, f"proxy {proxy.shown}: {exc}") from None
        except ProxyError as exc:
            if exc.error_code in SOCKS5_TARGET_FAILURES and proxy.version == 5:
                raise WireError(WireFailure.CONNECT, f"{target}:{port} {via}: {exc}") from None
            raise WireError(WireFailure.PROXY, f"proxy {proxy.shown}: {exc}") from None
        except OSError as exc:
            raise WireError(WireFailure.PROXY, f"proxy {proxy.shown}: {exc}") from None
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)
        except OSError as exc:
            sock.close()
            raise WireError(WireFailure.CLOSED, f"{target}:{port} {via}: {exc}") from None
        return cls(reader, writer)

    def has_unread(self) -> bool:
        """Bytes from the server that no command has asked for yet are waiting. StreamReader
        has no public peek; its buffer is the only place to look without consuming them."""
        buffer = getattr(self._reader, "_buffer", b"")
        return bool(buffer)

    def _reply_buffered(self) -> bool:
        """A whole reply (up to a line that is not a "-" continuation) is in the buffer, as
        the replies to a pipelined group mostly are: reading it cannot wait."""
        buffer = getattr(self._reader, "_buffer", None)
        if not buffer:
            return False
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            if buffer[start + 3 : start + 4] != b"-":
                return True
            start = end + 1
        return False

    @property
    def peer_ip(self) -> str | None:
        """The address this connection reached (for the default-identity warning)."""
        peer = self._writer.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) and peer else None

    @property
    def tls(self) -> bool:
        return self._writer.get_extra_info("sslcontext") is not None

    async def send(self, *commands: bytes, timeout: float) -> None:
        """Write commands (each without its CRLF) in one go: one command, or a pipelined
        group. Bounded by `timeout` when the server stops reading."""
        try:
            self._writer.write(b"".join(c + b"\r\n" for c in commands))
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            raise WireError(WireFailure.TIMEOUT, "the server stopped reading") from None
        except (ConnectionError, RuntimeError) as exc:  # RuntimeError: transport closed
            raise WireError(WireFailure.CLOSED, f"connection lost: {exc}") from None

    async def read_reply(self, timeout: float) -> WireReply:
        """The next whole reply, however many lines, within `timeout` seconds."""
        try:
            if self._reply_buffered():  # nothing to wait for: no timer to arm
                return await self._read_reply()
            async with asyncio.timeout(timeout):
                return await self._read_reply()
        except TimeoutError:
            raise WireError(WireFailure.TIMEOUT, f"no reply within {timeout:g}s") from None
        except (ConnectionError, ssl.SSLError) as exc:
            raise WireError(WireFailure.CLOSED, f"connection lost: {exc}") from None

    async def _read_reply(self) -> WireReply:
        code: int | None = None
        lines: list[str] = []
        while True:
            try:
                raw = await self._reader.readline()
            except (asyncio.LimitOverrunError, ValueError):
                raise WireError(WireFailure.PROTOCOL, "reply line too long") from None
            if not raw.endswith(b"\n"):
                raise WireError(WireFailure.CLOSED, "connection closed by the server")
            if len(raw) > MAX_LINE:
                raise WireError(WireFailure.PROTOCOL, "reply line too long")
            head = _REPLY_HEAD.match(raw)
            if head is None:
                shown = reply_text(raw).strip()[:80]
                raise WireError(WireFailure.PROTOCOL, f"malformed reply line: {shown!r}")
            this = int(head.group(1))
            if code is None:
                code = this
            elif this != code:
                raise WireError(WireFailure.PROTOCOL, f"reply code changed from {code} to {this}")
            lines.append(reply_text(raw[4:]).strip(" \t\r\n"))
            if head.group(2) != b"-":
                return WireReply(code, "\n".join(lines), tuple(lines))
            if len(lines) >= MAX_LINES:
                raise WireError(WireFailure.PROTOCOL, f"reply longer than {MAX_LINES} lines")

    async def start_tls(
        self, context: ssl.SSLContext, server_hostname: str | None, timeout: float
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(context, server_hostname=server_hostname)
        except TimeoutError:
            raise WireError(WireFailure.TIMEOUT, "TLS handshake timed out") from None
        except ssl.SSLError as exc:
            raise WireError(WireFailure.TLS, str(exc)) from None
        except ConnectionError as exc:
            detail = f"connection lost in TLS handshake: {exc}"
            raise WireError(WireFailure.CLOSED, detail) from None

    async def close(self, timeout: float) -> None:
        """Close politely within `timeout`, else drop the connection."""
        self._writer.close()
        try:
            async with asyncio.timeout(timeout):
                await self._writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            self.abort()

    async def linger(self, timeout: float) -> None:
        """Half-close (FIN), then wait at most `timeout` for the server to hang up, and drop.

        A server that is slow on purpose (a tarpit sleeping before its reply) notices our
        going only when it next reads or writes, and counts the connection against our
        IP until then (Postfix's anvil counts a client's connections until its smtpd
        process is done with them, postconf(5) smtpd_client_connection_count_limit,
        https://www.postfix.org/postconf.5.html#smtpd_client_connection_count_limit). Held
        until its EOF, our concurrency slot counts what the server counts. Over TLS no FIN
        can be sent without closing: we wait for the server to close, or the timeout."""
        try:
            if self._writer.can_write_eof():
                self._writer.write_eof()
            async with asyncio.timeout(timeout):
                while await self._reader.read(4096):
                    pass
        except (TimeoutError, OSError, ssl.SSLError, RuntimeError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the connection now, without a word."""
        with contextlib.suppress(Exception):
            self._writer.transport.abort()


def reply_text(raw: bytes) -> str:
    """Reply bytes as valid, printable text: UTF-8 where it is (RFC 6531 lets servers send
    it), any other byte and any control character kept visible as an escape (\\xff, \\x00),
    so what the server sent stays readable in the transcript and storable anywhere."""
    text = raw.decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


async def _answers(proxy: ProxyURL, timeout: float) -> bool:
    """Does the proxy accept a TCP connection at all (said nothing, closed at once)?"""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(proxy.host, proxy.port)
    except (OSError, TimeoutError):
        return False
    writer.transport.abort()
    return True
