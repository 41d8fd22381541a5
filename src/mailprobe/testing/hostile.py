"""An SMTP server that breaks the protocol on purpose, for tests of what a prober believes.

Real servers do this by accident: a banner written twice, a reply too many, a
pipelined group answered out of order by a broken proxy. `HostileSMTP` scripts
each of those on loopback; otherwise it answers like a plain server
(mailboxes in `exists` get 250, every other RCPT 550 5.1.1).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class HostileSMTP:
    """Start with `async with HostileSMTP(...) as server:`; `server.port` is where it listens."""

    exists: frozenset[str] = frozenset()  # lowercased addresses that get 250
    pipelining: bool = True  # offer RFC 2920 PIPELINING in EHLO
    after_greeting: bytes = b""  # written right after the greeting: a reply nobody asked for
    reverse_groups: bool = False  # answer the commands of one pipelined group in reverse order
    after_group: bytes = b""  # written after each pipelined group's replies: one too many
    rcpt_reply: bytes | None = None  # every RCPT gets this instead (e.g. b"354 go ahead\r\n")
    # Written a moment after the first RCPT's reply, on the first connection only: a reply
    # nobody asked for that arrives after the next command went out, shifting the rest.
    late_reply: bytes = b""
    connections: int = 0
    port: int = 0
    groups: list[int] = field(default_factory=list)  # commands per group read, for tests
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> HostileSMTP:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _answer(self, line: bytes) -> bytes:
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
        if verb in {b"EHLO", b"HELO"}:
            return (
                b"250-hostile.example\r\n250 PIPELINING\r\n"
                if self.pipelining
                else (b"250 hostile.example\r\n")
            )
        if verb == b"RCPT":
            if self.rcpt_reply is not None:
                return self.rcpt_reply
            address = line.split(b"<", 1)[-1].split(b">", 1)[0].decode(errors="replace")
            ok = address.lower() in self.exists
            return b"250 2.1.5 Ok\r\n" if ok else b"550 5.1.1 User unknown\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n"
        return b"250 2.0.0 Ok\r\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first_connection = self.connections == 1
        late_sent = False
        try:
            writer.write(b"220 hostile.example ESMTP\r\n" + self.after_greeting)
            await writer.drain()
            while line := (await reader.readline()).strip():
                group = [line]
                await asyncio.sleep(0.05)  # let the rest of a pipelined group arrive
                while b"\n" in getattr(reader, "_buffer", b""):
                    group.append((await reader.readline()).strip())
                self.groups.append(len(group))
                replies = [self._answer(cmd) for cmd in group]
                if self.reverse_groups and len(group) > 1:
                    replies.reverse()
                out = b"".join(replies)
                if len(group) > 1:
                    out += self.after_group
                writer.write(out)
                await writer.drain()
                rcpt = any(cmd.upper().startswith(b"RCPT") for cmd in group)
                if self.late_reply and first_connection and rcpt and not late_sent:
                    late_sent = True
                    await asyncio.sleep(0.3)  # the client has sent its next command by now
                    writer.write(self.late_reply)
                    await writer.drain()
                if any(cmd.upper().startswith(b"QUIT") for cmd in group):
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()
