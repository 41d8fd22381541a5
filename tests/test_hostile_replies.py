"""Bytes a server should not send: reply codes that are not three ASCII digits, bytes that
are not UTF-8, NUL and other control characters. Each ends in an honest answer
(`unknown / protocol_error`, or the reply kept as valid, escaped text), never a crash.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailprobe.config import Settings
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, verify
from mailprobe.inputs import read_addresses
from mailprobe.report import render_record
from mailprobe.results import LineAnswer
from mailprobe.smtp import aprobe_rcpt
from mailprobe.smtp_wire import SMTPWire, WireError, WireFailure, reply_text
from mailprobe.store import Store
from mailprobe.store.models import VerificationResult
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.hostile import HostileSMTP

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HELO = "probe.mailprobe.example"


@pytest.fixture
async def server() -> AsyncIterator[Callable[[bytes], Awaitable[int]]]:
    """A server that answers every RCPT with the given raw bytes (and plays SMTP otherwise)."""
    servers: list[asyncio.Server] = []

    async def start(rcpt_reply: bytes) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(b"220 hostile.example ESMTP\r\n")
                while line := (await reader.readline()).strip():
                    verb = line.split(b" ", 1)[0].upper()
                    if verb == b"EHLO":
                        writer.write(b"250-hostile.example\r\n250 8BITMIME\r\n")
                    elif verb == b"RCPT":
                        writer.write(rcpt_reply)
                    elif verb == b"QUIT":
                        writer.write(b"221 bye\r\n")
                        break
                    else:
                        writer.write(b"250 ok\r\n")
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(srv)
        port: int = srv.sockets[0].getsockname()[1]
        return port

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


async def probe(port: int) -> dict[str, Any]:
    return await aprobe_rcpt(
        "jane@acme.example", "127.0.0.1", helo_domain=HELO,
        mail_from="bounce@mailprobe.example", port=port, command_timeout=2, connect_timeout=2,
    )  # fmt: skip


@pytest.mark.parametrize(
    "reply",
    [
        "2٠5 ok\r\n".encode(),  # an Arabic-Indic zero: not an ASCII digit (RFC 5321 §4.2)
        "²⁵⁰ ok\r\n".encode(),  # superscript digits: str.isdigit() says yes, int() says no
        "２５０ ok\r\n".encode(),  # fullwidth digits
        b"650 ok\r\n",  # no reply code starts with 6
        b"25 ok\r\n",  # two digits
        b"2500 ok\r\n",  # four digits
        b"250x ok\r\n",  # neither space, hyphen nor the line's end after the code
    ],
)
async def test_a_code_that_is_not_three_ascii_digits_is_a_protocol_error(
    server, reply: bytes
) -> None:
    result = await probe(await server(reply))
    assert (result["category"], result["reason"]) == ("unknown", "protocol_error")
    assert result["code"] is None and result["error_kind"] == "protocol"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"550 5.1.1 caf\xe9 unknown\r\n", "5.1.1 caf\\xe9 unknown"),  # Latin-1, not UTF-8
        (b"550 5.1.1 no\x00body here\r\n", "5.1.1 no\\x00body here"),  # NUL
        ("550 5.1.1 Empfänger unbekannt\r\n".encode(), "5.1.1 Empfänger unbekannt"),  # UTF-8
    ],
)
async def test_reply_bytes_are_kept_as_valid_escaped_text(server, raw: bytes, shown: str) -> None:
    result = await probe(await server(raw))
    assert (result["code"], result["message"]) == (550, shown)
    json.dumps(result, ensure_ascii=False).encode("utf-8")  # valid UTF-8, no surrogates
    assert all("\x00" not in line for line in result["transcript"])


def test_reply_text_escapes_what_is_not_printable_utf8() -> None:
    assert reply_text(b"ok \xff\xfe \x00\x1b[31m") == "ok \\xff\\xfe \\x00\\x1b[31m"
    assert reply_text("déjà vu".encode()) == "déjà vu"


async def test_the_wire_refuses_a_superscript_code_as_a_protocol_error(server) -> None:
    port = await server(b"")
    wire = await SMTPWire.connect("127.0.0.1", port, timeout=2)
    try:
        await wire.read_reply(2)  # the greeting
        await wire.send(b"NOOP", timeout=2)
        assert (await wire.read_reply(2)).code == 250
    finally:
        wire.abort()

    async def superscript(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write("²⁵⁰ hello\r\n".encode())
        await writer.drain()
        await asyncio.sleep(2)

    srv = await asyncio.start_server(superscript, "127.0.0.1", 0)
    try:
        wire = await SMTPWire.connect("127.0.0.1", srv.sockets[0].getsockname()[1], timeout=2)
        with pytest.raises(WireError) as caught:
            await wire.read_reply(2)
        assert caught.value.failure is WireFailure.PROTOCOL
        wire.abort()
    finally:
        srv.close()
        await srv.wait_closed()


@pytest.mark.parametrize(
    "reply", ["²⁵⁰ ok\r\n".encode(), b"550 5.1.1 caf\xe9 \x00 unknown\r\n"], ids=["code", "bytes"]
)
async def test_bulk_verify_answers_stores_and_writes_valid_utf8(
    server, tmp_path: Path, reply: bytes
) -> None:
    """The bulk path: every line gets one record and one stored row, the output is valid
    UTF-8, and no NUL reaches the database."""
    port = await server(reply)
    dns = SimDNSServer({"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
                        "mx.acme.example": DomainSpec(a=["127.0.0.1"])})  # fmt: skip
    await dns.start()
    try:
        store = Store(f"sqlite:///{tmp_path / 'hostile.db'}")
        store.upgrade()
        settings = Settings.from_env({
            "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(port), "DATABASE_URL": store.url,
            "GLOBAL_RPS": "100", "PER_MX_RPS_DEFAULT": "100",
            "SMTP_COMMAND_TIMEOUT": "2"})  # fmt: skip
        out = io.StringIO()

        def write(line: LineAnswer) -> None:
            out.write(json.dumps(render_record(line), ensure_ascii=False) + "\n")

        ctx = Context.create(settings, store=store)
        lines = "".join(f"user{i}@acme.example\n" for i in range(5))
        try:
            await asyncio.wait_for(
                verify(read_addresses(io.StringIO(lines)), write, ctx=ctx,
                       options=BulkOptions(catch_all_check=False, temp_delays=())),
                30)  # fmt: skip
        finally:
            await ctx.aclose()
    finally:
        await dns.stop()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == 5
    out.getvalue().encode("utf-8")  # no lone surrogates
    with store.session() as session:
        rows = list(session.scalars(select(VerificationResult)))
    assert len(rows) == 5
    for row in rows:
        assert "\x00" not in (row.message or "") and "\x00" not in "".join(row.transcript)
    if reply.startswith("²".encode()):
        assert {(r["verdict"], r["reason"]) for r in records} == {("unknown", "protocol_error")}
    else:
        assert {(r["verdict"], r["reason"]) for r in records} == {
            ("undeliverable", "mailbox_not_found")
        }


async def test_a_failing_session_answers_what_it_held_and_the_run_ends(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a session (simulated: reading a RCPT reply raises) answers the addresses that
    session held, `unknown / internal_error`, logs once, and the run goes on and ends."""
    from mailprobe.engine.bulk import outcomes
    from mailprobe.engine.bulk import session as session_module

    real = outcomes.from_reply

    def broken(recipient: Any, session: Any, reply: Any, *args: Any) -> Any:
        if reply.stage == "rcpt" and "bug" in recipient.address.normalized:
            raise RuntimeError("simulated bug")
        return real(recipient, session, reply, *args)

    monkeypatch.setattr(session_module, "from_reply", broken)
    port = await server(b"250 2.1.5 ok\r\n")
    dns = SimDNSServer({"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
                        "mx.acme.example": DomainSpec(a=["127.0.0.1"]),
                        "other.example": DomainSpec(mx=[(10, "mx.acme.example")])})  # fmt: skip
    await dns.start()
    store = Store(f"sqlite:///{tmp_path / 'bug.db'}")
    store.upgrade()
    settings = Settings.from_env({
        "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(port), "DATABASE_URL": store.url,
        "GLOBAL_RPS": "100", "PER_MX_RPS_DEFAULT": "100"})  # fmt: skip
    records: list[dict[str, Any]] = []
    ctx = Context.create(settings, store=store)
    text = "a@acme.example\nbug@acme.example\nb@acme.example\nc@other.example\n"
    try:
        await asyncio.wait_for(
            verify(read_addresses(io.StringIO(text)), lambda la: records.append(render_record(la)),
                   ctx=ctx, options=BulkOptions(catch_all_check=False, rcpts_per_session=3)),
            30)  # fmt: skip
    finally:
        await ctx.aclose()
        await dns.stop()
    by_email = {r["email"]: (r["verdict"], r["reason"]) for r in records}
    assert len(records) == 4
    assert by_email["bug@acme.example"] == ("unknown", "internal_error")
    assert by_email["c@other.example"] == ("risky", "catch_all_unknown")  # the run went on


# -- replies in step with their commands ---------------------------------------------------


async def probe_hostile(server: HostileSMTP) -> dict[str, Any]:
    return await probe(server.port)


async def test_a_stray_reply_after_the_greeting_is_never_read_as_an_answer() -> None:
    """A server that says one reply too many shifts every later reply: the RCPT would read
    MAIL's 250 and call a missing mailbox accepted. Out of step: protocol_error."""
    async with HostileSMTP(after_greeting=b"250 2.0.0 hello again\r\n", pipelining=False) as srv:
        result = await probe_hostile(srv)
    assert (result["category"], result["reason"]) == ("unknown", "protocol_error")
    assert result["code"] is None


async def test_a_reply_that_cannot_answer_rcpt_is_out_of_step() -> None:
    async with HostileSMTP(rcpt_reply=b"354 End data with <CR><LF>.<CR><LF>\r\n") as srv:
        result = await probe_hostile(srv)
    assert (result["category"], result["reason"]) == ("unknown", "protocol_error")


async def verify_hostile(server: HostileSMTP, tmp_path: Path, emails: list[str]) -> dict[str, Any]:
    dns = SimDNSServer({"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
                        "mx.acme.example": DomainSpec(a=["127.0.0.1"])})  # fmt: skip
    await dns.start()
    store = Store(f"sqlite:///{tmp_path / 'step.db'}")
    store.upgrade()
    settings = Settings.from_env({
        "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(server.port),
        "DATABASE_URL": store.url, "GLOBAL_RPS": "100", "PER_MX_RPS_DEFAULT": "100",
        "SMTP_COMMAND_TIMEOUT": "2"})  # fmt: skip
    records: list[dict[str, Any]] = []
    ctx = Context.create(settings, store=store)
    try:
        await asyncio.wait_for(
            verify(read_addresses(io.StringIO("".join(f"{e}\n" for e in emails))),
                   lambda la: records.append(render_record(la)), ctx=ctx,
                   options=BulkOptions(catch_all_check=False, temp_delays=())),
            30)  # fmt: skip
    finally:
        await ctx.aclose()
        await dns.stop()
    return {r["email"]: (r["verdict"], r["reason"]) for r in records}


@pytest.mark.parametrize(
    "hostile",
    [
        {"reverse_groups": True},  # a pipelined group answered in reverse order
        {"after_group": b"250 2.0.0 Ok\r\n"},  # one reply more than the group's commands
    ],
    ids=["reversed-group", "extra-reply"],
)
async def test_a_pipelined_group_out_of_step_is_asked_again_one_by_one(
    tmp_path: Path, hostile: dict[str, Any]
) -> None:
    """Nothing an out-of-step group said is used: its addresses are asked again on a fresh
    connection without pipelining, where this server answers in step."""
    emails = [f"user{i}@acme.example" for i in range(6)]
    exists = frozenset(emails[::2])
    async with HostileSMTP(exists=exists, **hostile) as srv:
        got = await verify_hostile(srv, tmp_path, emails)
        assert max(srv.groups) > 1  # it was pipelined first
    for email in emails:
        expected = ("risky", "catch_all_unknown") if email in exists else (
            "undeliverable", "mailbox_not_found")  # fmt: skip
        assert got[email] == expected, email


async def test_out_of_step_twice_is_unknown_protocol_error(tmp_path: Path) -> None:
    """A server out of step even one command at a time: unknown / protocol_error, never a
    verdict on the mailbox."""
    emails = ["a@acme.example", "b@acme.example"]
    async with HostileSMTP(exists=frozenset(emails), rcpt_reply=b"220 hello\r\n") as srv:
        got = await verify_hostile(srv, tmp_path, emails)
    assert set(got.values()) == {("unknown", "protocol_error")}


async def test_a_late_stray_reply_one_command_at_a_time_uses_no_answer(tmp_path: Path) -> None:
    """Without pipelining, a stray reply that arrives after the next command went out
    shifts every later reply; it shows only when QUIT gets a 250. None of that session's
    answers is used: the addresses are asked again on a fresh connection, in step."""
    emails = [f"user{i}@acme.example" for i in range(4)]
    exists = frozenset(emails[::2])
    async with HostileSMTP(exists=exists, pipelining=False,
                           late_reply=b"250 2.0.0 Ok\r\n") as srv:  # fmt: skip
        got = await verify_hostile(srv, tmp_path, emails)
        assert srv.connections >= 2
    for email in emails:
        expected = ("risky", "catch_all_unknown") if email in exists else (
            "undeliverable", "mailbox_not_found")  # fmt: skip
        assert got[email] == expected, email
