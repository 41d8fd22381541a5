"""A SOCKS5 proxy on loopback (RFC 1928 CONNECT, RFC 1929 username/password), for tests
of egress routes: probes reach the simulated world through it, and the SMTP server sees
the proxy's connection (its outbound side can be bound to another loopback address).

Hand-written rather than pproxy (the maintained asyncio proxy on PyPI), for three gaps
that matter to what is tested here: pproxy answers CONNECT with success *before* it
dials the target (so "connection refused" and "host unreachable", RFC 1928 §6 replies
5 and 4, are never sent: the client sees a closed stream), it remembers a client IP
that once authenticated and lets later connections from it in without credentials
(pproxy.proto.Socks5.accept, AuthTable), and it offers no in-process API to learn the
port it bound. About 150 lines of the two RFCs, nothing more: no BIND, no UDP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from mailprobe.testing.background import ThreadedServer

# RFC 1928 §6 reply codes
SUCCEEDED, GENERAL_FAILURE, NOT_ALLOWED = 0x00, 0x01, 0x02
HOST_UNREACHABLE, CONNECTION_REFUSED = 0x04, 0x05
COMMAND_NOT_SUPPORTED, ADDRESS_NOT_SUPPORTED = 0x07, 0x08


@dataclass
class ProxyRecord:
    """What the proxy saw."""

    connections: int = 0  # clients accepted
    auth_failures: int = 0
    targets: list[tuple[str, int]] = field(default_factory=list)  # CONNECTs asked for
    replies: list[int] = field(default_factory=list)  # the reply code of each CONNECT
    open_now: int = 0
    max_open: int = 0


class SimSocks5Server(ThreadedServer):
    """`users` ({name: password}) requires RFC 1929 auth; None accepts no-auth clients only.
    `bind` is the local address its outbound connections leave from; `names` resolves
    domain-name CONNECTs (socks5h); `refuse` answers every CONNECT with that reply code."""

    thread_name = "sim-socks5"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        users: dict[str, str] | None = None,
        bind: str | None = None,
        names: dict[str, str] | None = None,
        refuse: int | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.host, self.port = host, port
        self.users, self.bind, self.names = users, bind, names or {}
        self.refuse = refuse
        self.connect_timeout = connect_timeout
        self.record = ProxyRecord()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """socks5://[user:pass@]host:port for this server (the first user, if any)."""
        auth = ""
        if self.users:
            name, password = next(iter(self.users.items()))
            auth = f"{name}:{password}@"
        return f"socks5://{auth}{self.host}:{self.port}"

    async def start(self) -> SimSocks5Server:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> SimSocks5Server:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        rec = self.record
        rec.connections += 1
        rec.open_now += 1
        rec.max_open = max(rec.max_open, rec.open_now)
        try:
            remote = await self._handshake(reader, writer)
            if remote is not None:
                await _pipe(reader, writer, *remote)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            rec.open_now -= 1
            writer.transport.abort()
            self._tasks.discard(task)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        version, count = await reader.readexactly(2)
        if version != 5:
            return None
        methods = await reader.readexactly(count)
        wanted = 0x02 if self.users is not None else 0x00
        if wanted not in methods:
            writer.write(b"\x05\xff")  # RFC 1928 §3: no acceptable methods
            await writer.drain()
            return None
        writer.write(bytes([5, wanted]))
        if self.users is not None and not await self._authenticate(reader, writer):
            return None
        _, command, _, kind = await reader.readexactly(4)
        host = await _address(reader, kind)
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        self.record.targets.append((host or "?", port))
        if command != 1:
            await self._reply(writer, COMMAND_NOT_SUPPORTED)
            return None
        if host is None:
            await self._reply(writer, ADDRESS_NOT_SUPPORTED)
            return None
        if self.refuse is not None:
            await self._reply(writer, self.refuse)
            return None
        target = self.names.get(host.lower().rstrip("."), host)
        try:
            async with asyncio.timeout(self.connect_timeout):
                remote = await asyncio.open_connection(
                    target, port, local_addr=(self.bind, 0) if self.bind else None
                )
        except ConnectionRefusedError:
            await self._reply(writer, CONNECTION_REFUSED)
            return None
        except (OSError, TimeoutError):
            await self._reply(writer, HOST_UNREACHABLE)
            return None
        bound = remote[1].get_extra_info("sockname")
        await self._reply(writer, SUCCEEDED, bound)
        return remote

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """RFC 1929: VER 1, ULEN, UNAME, PLEN, PASSWD; status 0 = success."""
        assert self.users is not None
        _, ulen = await reader.readexactly(2)
        name = (await reader.readexactly(ulen)).decode("utf-8", "replace")
        (plen,) = await reader.readexactly(1)
        password = (await reader.readexactly(plen)).decode("utf-8", "replace")
        ok = self.users.get(name) == password
        writer.write(b"\x01\x00" if ok else b"\x01\x01")
        await writer.drain()
        if not ok:
            self.record.auth_failures += 1
        return ok

    async def _reply(
        self, writer: asyncio.StreamWriter, code: int, bound: tuple[str, int] | None = None
    ) -> None:
        self.record.replies.append(code)
        ip, port = (bound[0], bound[1]) if bound else ("0.0.0.0", 0)
        packed = ipaddress.ip_address(ip).packed
        kind = 1 if len(packed) == 4 else 4
        writer.write(bytes([5, code, 0, kind]) + packed + struct.pack("!H", port))
        await writer.drain()


async def _address(reader: asyncio.StreamReader, kind: int) -> str | None:
    if kind == 1:
        return socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
    if kind == 4:
        return socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
    if kind == 3:
        (length,) = await reader.readexactly(1)
        return (await reader.readexactly(length)).decode("idna")
    return None


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    remote_reader: asyncio.StreamReader,
    remote_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side closes."""

    async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(Exception):
            dst.close()

    try:
        await asyncio.gather(copy(reader, remote_writer), copy(remote_reader, writer))
    finally:
        remote_writer.transport.abort()
