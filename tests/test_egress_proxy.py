"""One probe through a SOCKS5 proxy on loopback: the server sees the proxy's connection,
with and without RFC 1929 auth, with STARTTLS; a proxy that fails is proxy_error (the
route's failure, never the address's), an MX the proxy cannot reach is the MX's."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mailprobe.egress import Route, parse_proxy_url
from mailprobe.results import answer_for
from mailprobe.smtp import probe_address
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, SimSMTPServer
from mailprobe.testing.socks5 import CONNECTION_REFUSED, NOT_ALLOWED, SimSocks5Server

HELO = "probe.mailprobe.example"
MAIL_FROM = "bounce@mailprobe.example"
BOX = "jane@acme.example"


@pytest.fixture
async def proxies() -> AsyncIterator[Callable[..., Any]]:
    started: list[SimSocks5Server] = []

    async def make(**kw: Any) -> SimSocks5Server:
        proxy = await SimSocks5Server(**kw).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        await proxy.stop()


def via(url: str, name: str = "p") -> Route:
    return Route(name, proxy=parse_proxy_url(url))


async def probe(server: SimSMTPServer, route: Route, mx: str = "mx.acme.example", **kw: Any):
    return await probe_address(
        BOX, mx, helo_domain=HELO, mail_from=MAIL_FROM, port=server.port,
        connect_to="127.0.0.1", connect_timeout=3, command_timeout=3, route=route, **kw,
    )  # fmt: skip


def peers(server: SimSMTPServer) -> set[str]:
    return {c.peer.split("'")[1] for c in server.record.connection_log}


async def test_probe_goes_through_the_proxy_and_the_server_sees_the_proxy(
    smtp_server, proxies
) -> None:
    server = await smtp_server(MXBehavior(mailboxes={BOX: ACCEPT}))
    proxy = await proxies(bind="127.0.0.2")  # its outbound side: not our 127.0.0.1
    outcome = await probe(server, via(proxy.url))
    assert (outcome.reason, outcome.code) == ("accepted", 250)
    assert peers(server) == {"127.0.0.2"}
    assert proxy.record.targets == [("127.0.0.1", server.port)]
    assert any("via proxy socks5://127.0.0.1:" in line for line in outcome.transcript)


async def test_with_username_and_password_and_starttls(
    smtp_server, proxies, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    server = await smtp_server(MXBehavior(mailboxes={BOX: ACCEPT}, tls_context=server_tls))
    proxy = await proxies(users={"alice": "s3cret"}, bind="127.0.0.2")
    # the test CA's certificate names mx.sim.example: verified through the proxy
    outcome = await probe(server, via(proxy.url), "mx.sim.example", tls_context=client_tls)
    assert outcome.reason == "accepted"
    assert outcome.tls is True  # STARTTLS upgraded the proxied connection, cert verified
    assert "STARTTLS" in server.record.verbs()
    assert peers(server) == {"127.0.0.2"}
    assert proxy.record.auth_failures == 0


async def test_wrong_password_is_proxy_error_with_the_password_hidden(smtp_server, proxies) -> None:
    server = await smtp_server(MXBehavior(mailboxes={BOX: ACCEPT}))
    proxy = await proxies(users={"alice": "s3cret"})
    outcome = await probe(server, via(f"socks5://alice:wrong-pw@127.0.0.1:{proxy.port}"))
    assert (outcome.reason, outcome.error_kind, outcome.stage) == (
        "proxy_error", "proxy_error", "connect")  # fmt: skip
    assert f"socks5://alice:***@127.0.0.1:{proxy.port}" in (outcome.error or "")
    assert "wrong-pw" not in repr(outcome)
    assert answer_for(outcome).verdict.value == "unknown"
    assert server.record.connections == 0 and proxy.record.auth_failures == 1


async def test_no_credentials_to_a_proxy_that_wants_them(smtp_server, proxies) -> None:
    server = await smtp_server(MXBehavior(mailboxes={BOX: ACCEPT}))
    proxy = await proxies(users={"alice": "s3cret"})
    outcome = await probe(server, via(f"socks5://127.0.0.1:{proxy.port}"))
    assert outcome.reason == "proxy_error" and server.record.connections == 0


async def test_proxy_down_is_proxy_error_naming_it(smtp_server, proxies) -> None:
    server = await smtp_server(MXBehavior(mailboxes={BOX: ACCEPT}))
    proxy = await proxies()
    port = proxy.port
    await proxy.stop()  # nothing listens there now: refused
    outcome = await probe(server, via(f"socks5://bob:pw@127.0.0.1:{port}"))
    assert outcome.reason == "proxy_error"
    assert f"proxy socks5://bob:***@127.0.0.1:{port}" in (outcome.error or "")
    assert answer_for(outcome).as_seed_dict()["verdict"] == "unknown"


async def test_proxy_refusing_by_its_rules_is_proxy_error(smtp_server, proxies) -> None:
    server = await smtp_server(MXBehavior(mailboxes={BOX: ACCEPT}))
    proxy = await proxies(refuse=NOT_ALLOWED)  # RFC 1928 reply 2: not allowed by ruleset
    outcome = await probe(server, via(proxy.url))
    assert outcome.reason == "proxy_error"


async def test_mx_refusing_the_proxy_is_the_mx_failure_not_the_proxy(smtp_server, proxies) -> None:
    server = await smtp_server(MXBehavior(mailboxes={BOX: ACCEPT}))
    proxy = await proxies(refuse=CONNECTION_REFUSED)  # RFC 1928 reply 5
    outcome = await probe(server, via(proxy.url))
    assert (outcome.reason, outcome.error_kind) == ("connection_failed", "connection_failed")
    assert "via proxy" in (outcome.error or "")


async def test_socks5h_hands_the_mx_name_to_the_proxy(smtp_server, proxies) -> None:
    server = await smtp_server(MXBehavior(mailboxes={BOX: ACCEPT}))
    proxy = await proxies(names={"mx.acme.example": "127.0.0.1"})
    outcome = await probe(server, via(f"socks5h://127.0.0.1:{proxy.port}"))
    assert outcome.reason == "accepted"
    assert proxy.record.targets == [("mx.acme.example", server.port)]


async def test_skip_route_dials_nothing(smtp_server) -> None:
    from mailprobe.egress import SKIP_ROUTE

    server = await smtp_server(MXBehavior(mailboxes={BOX: ACCEPT}))
    outcome = await probe(server, SKIP_ROUTE)
    assert (outcome.reason, outcome.code) == ("smtp_skipped", None)
    assert answer_for(outcome).verdict.value == "unknown"
    assert server.record.connections == 0


async def test_source_address_route_binds_the_local_end(smtp_server) -> None:
    server = await smtp_server(MXBehavior(mailboxes={BOX: ACCEPT}))
    outcome = await probe(server, Route("direct@127.0.0.3", source_address="127.0.0.3"))
    assert outcome.reason == "accepted" and peers(server) == {"127.0.0.3"}
