"""Serving an asyncio server from sync code: its own event loop in a daemon thread.

Tests with subprocesses, sync APIs (`probe_rcpt`) and benchmarks need a server
that runs while the caller's thread blocks; `with server:` does that for any
class with async `start()` and `stop()`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Self


class ThreadedServer:
    """Mixin: `with obj:` runs `await obj.start()` on a private loop in a thread."""

    thread_name = "sim-server"
    start_timeout = 30.0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    async def start(self) -> Any:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        thread.start()
        if not ready.wait(self.start_timeout) or failure:
            thread.join(5)
            loop.close()
            raise RuntimeError(f"{self.thread_name} did not start") from (
                failure[0] if failure else None
            )
        self._thread, self._loop = thread, loop
        return self

    def __exit__(self, *exc: object) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
            self._loop = self._thread = None
