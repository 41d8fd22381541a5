"""SMTPUTF8 on every path (issue 13, point 4): a non-ASCII local part goes only to a
server that offers SMTPUTF8, with `MAIL FROM:<...> SMTPUTF8`; elsewhere its answer is
unknown / smtputf8_unsupported and no RCPT is sent for it. And quoted local parts
(point 3) reach the server in their wire form."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from mailprobe.address import parse_address
from mailprobe.config import Settings
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, verify
from mailprobe.inputs import read_addresses
from mailprobe.report import render_record
from mailprobe.smtp import SMTPSession
from mailprobe.store import Store
from mailprobe.testing.dnsd import DomainSpec
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, split_path
from mailprobe.testing.world import SimWorld
from mailprobe.testing.worldconfig import Kind, WorldConfig

from .conftest import HELO, MAIL_FROM, MakeServer
from .test_bulk import by_email, world_factory  # noqa: F401  (the fixture)

NO_PIPELINING = ("SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES")
LIST = 'jöe@intl.example\nann@intl.example\n"d.wood"@intl.example\n"john doe"@intl.example\n'


def _intl(smtputf8: bool, pipelining: bool) -> MXBehavior:
    mailboxes = {m: ACCEPT for m in ("ann@intl.example", "d.wood@intl.example",
                                     '"john doe"@intl.example', "jöe@intl.example")}  # fmt: skip
    behavior = MXBehavior(smtputf8=smtputf8, mailboxes=mailboxes)
    if not pipelining:
        behavior.extensions = NO_PIPELINING
    return behavior


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_non_ascii_local_part_never_goes_to_a_server_without_smtputf8(
    world_factory: Any,  # noqa: F811  (the fixture imported above)
    pipelining: bool,
) -> None:
    world = await world_factory(
        {"mx.intl.example": ("127.0.0.1", _intl(smtputf8=False, pipelining=pipelining))},
        {"intl.example": DomainSpec(mx=[(10, "mx.intl.example")])},
    )
    records, _ = await world.run(LIST)
    got = by_email(records)
    joe = got["jöe@intl.example"]
    assert (joe["verdict"], joe["reason"], joe["code"]) == ("unknown", "smtputf8_unsupported", None)
    assert joe["mx_host"] == "mx.intl.example"
    for email in ("ann@intl.example", '"d.wood"@intl.example', '"john doe"@intl.example'):
        assert (got[email]["verdict"], got[email]["reason"]) == ("deliverable", "accepted")
    commands = world.servers["mx.intl.example"].record.commands
    rcpts = [c for c in commands if c.startswith("RCPT")]
    assert all(c.isascii() for c in commands)  # no RCPT (nor anything) with jöe
    assert "RCPT TO:<d.wood@intl.example>" in rcpts  # the needless quotes dropped
    assert 'RCPT TO:<"john doe"@intl.example>' in rcpts
    assert not any("SMTPUTF8" in c for c in commands)  # not offered: never declared


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_smtputf8_server_gets_a_mixed_transaction_declared(
    world_factory: Any,  # noqa: F811  (the fixture imported above)
    pipelining: bool,
) -> None:
    world = await world_factory(
        {"mx.intl.example": ("127.0.0.1", _intl(smtputf8=True, pipelining=pipelining))},
        {"intl.example": DomainSpec(mx=[(10, "mx.intl.example")])},
    )
    records, _ = await world.run(LIST)
    got = by_email(records)
    assert {(r["verdict"], r["reason"]) for r in got.values()} == {("deliverable", "accepted")}
    commands = world.servers["mx.intl.example"].record.commands
    mails = [c for c in commands if c.startswith("MAIL")]
    assert mails and all(c.endswith(" SMTPUTF8") for c in mails)
    assert "RCPT TO:<jöe@intl.example>" in commands


async def test_sim_server_refuses_like_postfix(smtp_server: MakeServer) -> None:
    """Postfix smtpd.c: 553 5.6.7 for a unicode address in a transaction that did not
    declare SMTPUTF8; 555 5.5.4 for the SMTPUTF8 parameter when it is not offered."""
    plain = await smtp_server(MXBehavior(default_rcpt=ACCEPT))
    session = SMTPSession("mx.sim.example", HELO, port=plain.port, connect_to="127.0.0.1")
    await session.open()
    assert not session.smtputf8
    await session.mail(MAIL_FROM)
    reply = await session.rcpt(parse_address("jöe@intl.example"))
    assert (reply.code, reply.message) == (
        553, "5.6.7 Must declare SMTPUTF8 to send unicode address")  # fmt: skip
    session.smtputf8 = True  # pretend it was offered: the server refuses the parameter
    await session.rset()
    reply = await session.pipeline([("mail", session.mail_command(MAIL_FROM))]).__anext__()
    assert (reply.code, reply.message) == (555, "5.5.4 Unsupported option: SMTPUTF8")
    await session.close()

    utf8 = await smtp_server(MXBehavior(default_rcpt=ACCEPT, smtputf8=True))
    session = SMTPSession("mx.sim.example", HELO, port=utf8.port, connect_to="127.0.0.1")
    await session.open()
    assert session.smtputf8
    await session.mail(MAIL_FROM)
    assert (await session.rcpt(parse_address("jöe@intl.example"))).code == 250
    await session.close()


def test_split_path_reads_quoted_local_parts() -> None:
    assert split_path('TO:<"a> b@c"@x.example> NOTIFY=NEVER') == (
        '"a> b@c"@x.example', ["NOTIFY=NEVER"])  # fmt: skip
    assert split_path("FROM:<> SMTPUTF8") == ("", ["SMTPUTF8"])
    assert split_path('TO:<"a\\"> b"@x>') == ('"a\\"> b"@x', [])


async def test_intl_world_every_verdict_right(tmp_path: Path) -> None:
    """The world's INTL kinds, end to end through bulk verify: every determinable verdict
    right, the SMTPUTF8-less MX's non-ASCII addresses unknown / smtputf8_unsupported."""
    config = WorldConfig(mix={Kind.INTL: 1.0, Kind.INTL_LEGACY: 1.0}, invalid_fraction=0.1)
    async with SimWorld(domains=4, addresses=48, seed=5, config=config) as world:
        env = {**world.env(), "GLOBAL_RPS": "200", "PER_MX_RPS_DEFAULT": "100",
               "SMTP_CONNECT_TIMEOUT": "3", "SMTP_COMMAND_TIMEOUT": "3"}  # fmt: skip
        settings = Settings.from_env(env)
        store = Store(f"sqlite:///{tmp_path / 'intl.db'}")
        store.upgrade()
        ctx = Context.create(settings, store=store)
        records: list[dict[str, Any]] = []
        text = "\n".join(world.addresses(include_invalid=True)) + "\n"
        try:
            await verify(
                read_addresses(io.StringIO(text), settings.special_use_allowed),
                lambda la: records.append(render_record(la)),
                ctx=ctx,
                options=BulkOptions(reuse_ttl=None),
            )
        finally:
            await ctx.aclose()
            store.dispose()
    reasons = set()
    for r in records:
        truth = world.truth.lookup(r["email"])
        assert truth is not None
        assert r["verdict"] == world.expected_verdict(r["email"]), (r, truth.expected_reason)
        assert r["reason"] == truth.expected_reason or truth.catch_all, r
        reasons.add(r["reason"])
    assert "smtputf8_unsupported" in reasons and "accepted" in reasons
    assert len(records) == len(world.addresses(include_invalid=True))
    quoted = [a for a in world.addresses() if a.startswith('"')]
    assert quoted and all(by_email(records)[a]["verdict"] != "unknown" for a in quoted)
