"""A private redis-server for tests: random port, temp dir, no persistence.

Use with ``pytest_plugins = ["tests.redis_server"]`` in a test module. Tests never
touch a shared Redis (6379 may be somebody's real data); without the binary they
are skipped with the reason, so a fresh machine still runs everything else.

* ``redis_server_url`` (session): starts the server once, yields its URL, stops it.
* ``redis_url`` (function): the same URL after FLUSHALL, so tests do not see each other.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 10.0


def _redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(port: int, *words: str, timeout: float = 1.0) -> bytes:
    """One RESP command on a fresh connection (no client library needed to probe readiness)."""
    payload = f"*{len(words)}\r\n".encode()
    for word in words:
        data = word.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        return sock.recv(1024)


def _start(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start on a free port; a port taken between our check and the bind is retried."""
    log_path = workdir / "redis.log"
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--logfile",
                str(log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _command(port, "PING").startswith(b"+PONG"):
                    return proc, port
            except OSError:
                pass
            time.sleep(0.05)
        _stop(proc)
    log_text = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    raise RuntimeError(f"private redis-server did not start; log tail:\n{log_text}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _redis_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    proc, port = _start(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    port = int(redis_server_url.rsplit(":", 1)[1].split("/", 1)[0])
    reply = _command(port, "FLUSHALL", timeout=5.0)
    assert reply.startswith(b"+OK"), reply
    return redis_server_url
