"""The SMTP wire: reply parsing within limits, and RFC 2920 pipelining, against raw servers.

The servers here are plain asyncio sockets on loopback that write exactly the bytes
a test gives them, so malformed and hostile replies can be served as they are.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailprobe.address import parse_address
from mailprobe.config import Settings
from mailprobe.engine.bulk import BulkOptions, verify
from mailprobe.engine.context import Context
from mailprobe.inputs import read_addresses
from mailprobe.report import render_record
from mailprobe.smtp import SessionError, SMTPSession
from mailprobe.smtp_wire import MAX_LINES, SMTPWire, WireError, WireFailure
from mailprobe.store import Store
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer

pytestmark = pytest.mark.r16  # the seed's label: pytest -k r16

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(guarded, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def serve_bytes(data: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(5)

    return handler


async def read_one(port: int, timeout: float = 2.0) -> Any:
    wire = await SMTPWire.connect("127.0.0.1", port, timeout=2.0)
    try:
        return await wire.read_reply(timeout)
    finally:
        wire.abort()


async def test_wire_multiline_reply_joined_as_aiosmtplib_did(raw_server) -> None:
    port = await raw_server(
        serve_bytes(b"250-mx.example Hello\r\n250-PIPELINING\r\n250 SIZE 10\r\n")
    )
    reply = await read_one(port)
    assert (reply.code, reply.message) == (250, "mx.example Hello\nPIPELINING\nSIZE 10")
    assert reply.lines == ("mx.example Hello", "PIPELINING", "SIZE 10")


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"hello there\r\n", "malformed"),
        (b"250-first\r\n550 second\r\n", "code changed"),
        (b"250 " + b"x" * 5000 + b"\r\n", "too long"),
        (b"250-" + b"x" * 70_000, "too long"),  # no line end at all: bounded, not buffered
        (b"250-x\r\n" * (MAX_LINES + 5), f"longer than {MAX_LINES} lines"),
    ],
)
async def test_wire_refuses_what_is_not_an_smtp_reply(raw_server, data, detail) -> None:
    port = await raw_server(serve_bytes(data))
    with pytest.raises(WireError) as info:
        await read_one(port)
    assert info.value.failure is WireFailure.PROTOCOL
    assert detail in str(info.value)


async def test_wire_closed_mid_reply_and_silent_server(raw_server) -> None:
    async def close_mid_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220-almost\r\n220 ")
        await writer.drain()

    port = await raw_server(close_mid_reply)
    with pytest.raises(WireError) as info:
        await read_one(port)
    assert info.value.failure is WireFailure.CLOSED

    port = await raw_server(serve_bytes(b""))
    with pytest.raises(WireError) as info:
        await read_one(port, timeout=0.3)
    assert info.value.failure is WireFailure.TIMEOUT


def buffering_server(extensions: list[str], seen: list[list[str]]) -> Handler:
    """An RFC 2920 server that answers MAIL/RCPT/RSET only as a unit, once it has the
    RSET that ends the group (what its §3.2 suggests a server may do). A client that
    waits for each reply before sending the next command waits forever here."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 buffering.example ESMTP\r\n")
        group: list[str] = []
        while line := (await reader.readline()).decode().strip():
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                lines = ["buffering.example", *extensions]
                writer.write("".join(f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n"
                                     for i, x in enumerate(lines)).encode())  # fmt: skip
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                return
            else:
                group.append(line)
                if verb != "RSET":
                    continue
                seen.append(group)
                replies = []
                for command in group:
                    if command.upper().startswith("RCPT") and "nobody" not in command:
                        replies.append("250 2.1.5 OK")
                    elif command.upper().startswith("RCPT"):
                        replies.append("550 5.1.1 No such user here")
                    else:
                        replies.append("250 2.0.0 OK")
                writer.write("".join(r + "\r\n" for r in replies).encode())
                group = []
            await writer.drain()

    return handler


async def test_pipelined_transaction_is_one_group(raw_server) -> None:
    seen: list[list[str]] = []
    port = await raw_server(buffering_server(["PIPELINING"], seen))
    session = SMTPSession("127.0.0.1", "probe.example", port=port, command_timeout=2)
    await session.open()
    assert session.pipelining
    group = [("mail", session.mail_command("probe@probe.example"))]
    group += [("rcpt", session.rcpt_command(parse_address(a)))
              for a in ("jane@acme.example", "nobody@acme.example")]  # fmt: skip
    group.append(("rset", (b"RSET",)))
    replies = [r async for r in session.pipeline(group)]
    await session.close()
    assert [(r.stage, r.code) for r in replies] == [
        ("mail", 250), ("rcpt", 250), ("rcpt", 550), ("rset", 250)]  # fmt: skip
    assert len(seen) == 1 and len(seen[0]) == 4


async def test_pipeline_keeps_replies_read_before_a_drop(raw_server) -> None:
    async def drop_after_two(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 x\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-x\r\n250 PIPELINING\r\n")
        for _ in range(4):
            await reader.readline()
        writer.write(b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n")
        await writer.drain()

    port = await raw_server(drop_after_two)
    session = SMTPSession("127.0.0.1", "probe.example", port=port, command_timeout=2)
    await session.open()
    group = [("mail", session.mail_command("p@probe.example")),
             ("rcpt", session.rcpt_command(parse_address("a@acme.example"))),
             ("rcpt", session.rcpt_command(parse_address("b@acme.example"))),
             ("rset", (b"RSET",))]  # fmt: skip
    got = []
    with pytest.raises(SessionError) as info:
        async for reply in session.pipeline(group):
            got.append(reply.code)
    await session.close()
    assert got == [250, 250]
    assert (info.value.kind.value, info.value.stage) == ("disconnected", "rcpt")


async def verify_acme(
    port: int, tmp_path: Path, text: str, options: BulkOptions, **env: str
) -> list[dict[str, Any]]:
    """`verify` over acme.example, whose one MX is the raw server on `port`."""
    dns = SimDNSServer({"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
                        "mx.acme.example": DomainSpec(a=["127.0.0.1"])})  # fmt: skip
    await dns.start()
    try:
        tmp_path.mkdir(parents=True, exist_ok=True)
        store = Store(f"sqlite:///{tmp_path / 'acme.db'}")
        store.upgrade()
        settings = Settings.from_env({
            "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(port),
            "GLOBAL_RPS": "100", "PER_MX_RPS_DEFAULT": "100", "DATABASE_URL": store.url,
            **env})  # fmt: skip
        records: list[dict[str, Any]] = []
        ctx = Context.create(settings, store=store)
        try:
            await asyncio.wait_for(
                verify(read_addresses(io.StringIO(text)),
                       lambda la: records.append(render_record(la)), ctx=ctx,
                       options=options), 30)  # fmt: skip
        finally:
            await ctx.aclose()
    finally:
        await dns.stop()
    return records


@pytest.mark.parametrize(("offered", "enabled"), [(True, True), (False, True), (True, False)])
async def test_bulk_pipelines_only_when_offered(raw_server, tmp_path, offered, enabled) -> None:
    """Against the buffering server the whole list is answered only by pipelining;
    without PIPELINING offered (or with SMTP_PIPELINING=0) the client waits for each
    reply, so the same server never answers (an honest timeout), and nothing is grouped."""
    seen: list[list[str]] = []
    port = await raw_server(buffering_server(["PIPELINING"] if offered else [], seen))
    records = await verify_acme(
        port, tmp_path, "jane@acme.example\nnobody@acme.example\n",
        BulkOptions(reuse_ttl=None, slow_retry=False, temp_delays=()),
        SMTP_COMMAND_TIMEOUT="1", SMTP_CONNECT_TIMEOUT="1",
        SMTP_PIPELINING="1" if enabled else "0",
    )  # fmt: skip
    got = {r["email"]: r["reason"] for r in records}
    if offered and enabled:  # the catch-all check's random local part is accepted too
        assert got == {"jane@acme.example": "catch_all", "nobody@acme.example": "mailbox_not_found"}
        assert [len(g) for g in seen] == [4, 3]  # MAIL RCPT RCPT RSET, then the check
    else:
        assert set(got.values()) == {"timeout"}
        assert seen == []


@pytest.mark.parametrize("pipelining", [False, True])
async def test_bulk_session_broken_after_an_accept_loses_nothing(
    raw_server, tmp_path, pipelining
) -> None:
    """The first connection accepts one RCPT, then hangs up at the next, before the
    catch-all check: the accepted address is asked again, and every line is answered,
    whether the session went command by command or as one pipelined group."""
    connections = [0]

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        first = connections[0] == 1
        writer.write(b"220 flaky.example ESMTP\r\n")
        rcpts = 0
        while line := (await reader.readline()).decode().strip():
            verb = line.split(" ", 1)[0].upper()
            if verb == "RCPT":
                rcpts += 1
                if first and rcpts == 2:
                    return  # hang up mid-transaction
                ok = "nobody" not in line and "mp-" not in line
                writer.write(b"250 2.1.5 OK\r\n" if ok else b"550 5.1.1 No such user\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                return
            elif verb == "EHLO" and pipelining:
                writer.write(b"250-flaky.example\r\n250 PIPELINING\r\n")
            else:
                writer.write(b"250 OK\r\n")
            await writer.drain()

    port = await raw_server(flaky)
    text = "jane@acme.example\nnobody@acme.example\njohn@acme.example\n"
    records = await verify_acme(
        port, tmp_path, text, BulkOptions(reuse_ttl=None, temp_delays=(0.1,))
    )
    got = {r["email"]: (r["verdict"], r["reason"]) for r in records}
    assert got == {
        "jane@acme.example": ("deliverable", "accepted"),
        "nobody@acme.example": ("undeliverable", "mailbox_not_found"),
        "john@acme.example": ("deliverable", "accepted"),
    }
    assert connections[0] >= 2


async def test_sim_round_trip_time_is_paid_once_per_group() -> None:
    """The simulated network (MXBehavior.rtt) charges a round trip per reply waited for:
    one command at a time pays it per command, a pipelined group once."""
    import time

    from mailprobe.testing.smtpd import ACCEPT, MXBehavior, SimSMTPServer

    rtt = 0.3
    server = await SimSMTPServer(MXBehavior(default_rcpt=ACCEPT, rtt=rtt)).start()
    try:
        session = SMTPSession("127.0.0.1", "probe.example", port=server.port, command_timeout=5)
        await session.open()  # greeting and EHLO: two round trips
        addresses = [parse_address(f"u{i}@acme.example") for i in range(4)]
        group = [("mail", session.mail_command("p@probe.example"))]
        group += [("rcpt", session.rcpt_command(a)) for a in addresses]
        group.append(("rset", (b"RSET",)))
        started = time.monotonic()
        replies = [r.code async for r in session.pipeline(group)]
        grouped = time.monotonic() - started
        started = time.monotonic()
        await session.mail("p@probe.example")
        for address in addresses:
            await session.rcpt(address)
        await session.rset()
        one_by_one = time.monotonic() - started
        await session.close()
    finally:
        await server.stop()
    assert replies == [250, 250, 250, 250, 250, 250]
    assert one_by_one >= 6 * rtt  # six round trips, each waited for
    assert rtt <= grouped < 3 * rtt  # one round trip (generous bound for a loaded machine)


async def test_bulk_session_is_one_group_at_network_latency(tmp_path) -> None:
    """With a 100 ms round trip, a session of two transactions and a catch-all check
    costs greeting, EHLO and one group pipelined, against a round trip per command one
    command at a time (here at least 12); the answers are the same."""
    import time

    from mailprobe.testing.smtpd import ACCEPT, MXBehavior, SimSMTPServer

    behavior = MXBehavior(rtt=0.1, mailboxes={f"u{i}@acme.example": ACCEPT for i in range(3)})
    server = await SimSMTPServer(behavior).start()
    text = "".join(f"u{i}@acme.example\n" for i in range(6))
    took: dict[str, float] = {}
    answers: dict[str, dict[str, str]] = {}
    try:
        for mode in ("1", "0"):
            started = time.monotonic()
            options = BulkOptions(reuse_ttl=None)
            records = await verify_acme(
                server.port, tmp_path / mode, text, options, SMTP_PIPELINING=mode
            )
            took[mode] = time.monotonic() - started
            answers[mode] = {r["email"]: r["verdict"] for r in records}
    finally:
        await server.stop()
    assert answers["1"] == answers["0"]
    assert answers["1"]["u0@acme.example"] == "deliverable"
    assert answers["1"]["u5@acme.example"] == "undeliverable"
    assert took["0"] >= 12 * 0.1, took
    assert took["1"] * 2 < took["0"], took
