"""An MX host that never completes the TCP handshake: a client's connect() times out.

A dead primary on the Internet is mostly silent, not refusing: its SYNs go
unanswered (host down, a firewall that drops), so a client waits out its connect
timeout, where "nobody listens" on loopback would be refused at once (an RST).
On loopback the silence is made with the kernel's accept queue: a socket listening
with a backlog of 0 that never accepts, whose queue one connection of our own
fills. Linux drops a SYN that arrives at a listener with a full accept queue (with
tcp_abort_on_overflow=0, the default), so every further connect() times out.
Checked on this Linux (6.x): the filling connection completes, the next ones time
out rather than being refused; `tests/test_sim_world.py` checks it on every run.
"""

from __future__ import annotations

import contextlib
import socket

from mailprobe.testing.background import ThreadedServer


class SynDropper(ThreadedServer):
    """A listening socket whose accept queue is full: connects to it time out."""

    thread_name = "sim-syndrop"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._listener: socket.socket | None = None
        self._filler: socket.socket | None = None

    async def start(self) -> SynDropper:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(0)
            self.port = int(listener.getsockname()[1])
            filler = socket.create_connection((self.host, self.port), timeout=1.0)
        except BaseException:
            listener.close()
            raise
        self._listener, self._filler = listener, filler
        return self

    async def stop(self) -> None:
        for sock in (self._filler, self._listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._listener = self._filler = None

    async def __aenter__(self) -> SynDropper:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
