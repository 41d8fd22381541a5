"""Shared fixtures: scripted SMTP servers on loopback, TLS material, a clean settings cache."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trustme

from mailprobe import behavior, config, identity
from mailprobe.testing.smtpd import MXBehavior, SimSMTPServer

HELO = "probe.mailprobe.example"
MAIL_FROM = "bounce@mailprobe.example"

MakeServer = Callable[..., Awaitable[SimSMTPServer]]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees another's settings, database or behaviour cache, nor the developer's env."""
    import os

    for name in list(os.environ):
        if name.startswith(
            ("SMTP_", "DNS_", "DATABASE_", "REDIS_", "MX_", "GLOBAL_", "PER_MX_", "REUSE_")
        ):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'mailprobe.db'}")
    # The default database and run state live in the user's data directory: a temp one.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.delenv("MAILPROBE_RUNS_DIR", raising=False)
    # Tests live under .example (RFC 6761), refused by default as reserved_domain.
    monkeypatch.setenv("SPECIAL_USE_ALLOWED", "example")
    # verify's port 25 check dials gmail.com's MX: never from a test (no network), but
    # where a test turns it on with a simulated gmail.com.
    monkeypatch.setenv("PORT25_CHECK", "0")
    config.get_settings.cache_clear()
    behavior.default_cache.clear()
    identity.reset()
    yield
    config.get_settings.cache_clear()
    behavior.default_cache.clear()


@pytest.fixture
async def smtp_server() -> AsyncIterator[MakeServer]:
    """Factory: `await smtp_server(MXBehavior(...))` starts a scripted server on 127.0.0.1."""
    started: list[SimSMTPServer] = []

    async def make(behavior: MXBehavior | None = None, host: str = "127.0.0.1") -> SimSMTPServer:
        server = await SimSMTPServer(behavior, host=host).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(tls_ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("mx.sim.example", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def client_tls(tls_ca: trustme.CA) -> ssl.SSLContext:
    """A client context that verifies the server against the test CA."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    tls_ca.configure_trust(ctx)
    return ctx
