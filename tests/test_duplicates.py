"""Lines of one run that ask the same mailbox: probed once, answered for every line, each
line its own record (its number, its text as given)."""

from __future__ import annotations

from mailprobe.engine.bulk import BulkOptions
from mailprobe.engine.bulk.reader import Duplicates
from mailprobe.inputs import entry
from mailprobe.results import invalid_answer
from mailprobe.testing.dnsd import DomainSpec
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, Scripted
from tests.test_bulk import GREYLIST
from tests.test_bulk import world_factory as world_factory  # a fixture, shared

NO_CHECK = BulkOptions(reuse_ttl=None, catch_all_check=False)


def rcpts(world, host: str) -> list[str]:
    return [c for c in world.servers[host].record.commands if c.upper().startswith("RCPT")]


async def test_same_address_three_times_is_one_rcpt_and_three_records(world_factory) -> None:
    world = await world_factory(
        {"mx.acme.example": ("127.0.0.1", MXBehavior(default_rcpt=ACCEPT))},
        {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")])},
    )
    text = 'jane@acme.example\nbob@acme.example\n"Jane" <jane@ACME.example>\n jane@acme.example;\n'
    records, summary = await world.run(text, NO_CHECK)
    assert [r for r in rcpts(world, "mx.acme.example") if "jane" in r.lower()] == [
        "RCPT TO:<jane@acme.example>"
    ]
    assert sorted((r["line"], r["email"]) for r in records) == [
        (1, "jane@acme.example"),
        (2, "bob@acme.example"),
        (3, '"Jane" <jane@ACME.example>'),
        (4, " jane@acme.example;"),
    ]
    assert {r["verdict"] for r in records} == {"risky"}  # accepted, catch-all unknown
    assert summary.total == 4


async def test_local_part_case_is_the_servers_business(world_factory) -> None:
    world = await world_factory(
        {"mx.acme.example": ("127.0.0.1", MXBehavior(default_rcpt=ACCEPT))},
        {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")])},
    )
    records, _ = await world.run("Jane@acme.example\njane@acme.example\n", NO_CHECK)
    assert len(rcpts(world, "mx.acme.example")) == 2  # RFC 5321 section 2.4: may differ
    assert len(records) == 2


async def test_a_later_duplicate_gets_the_answer_without_a_probe(world_factory) -> None:
    world = await world_factory(
        {"mx.acme.example": ("127.0.0.1", MXBehavior())},  # 550 user unknown
        {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")])},
    )
    first, _ = await world.run("gone@acme.example\n", NO_CHECK)
    assert first[0]["reason"] == "mailbox_not_found"
    # Far apart in one run: the first is answered before the copy is read.
    text = "gone@acme.example\n" + "".join(f"bad line {i}\n" for i in range(500))
    text += "gone@acme.example\n"
    before = len(rcpts(world, "mx.acme.example"))
    records, _ = await world.run(text, NO_CHECK)
    assert len(rcpts(world, "mx.acme.example")) == before + 1
    got = {r["line"]: r for r in records}
    assert len(got) == 502 and got[502]["reason"] == "mailbox_not_found"


async def test_no_wait_answers_the_copies_of_a_pending_line(world_factory) -> None:
    world = await world_factory(
        {"mx.g.example": ("127.0.0.1", MXBehavior(default_rcpt=GREYLIST))},
        {"g.example": DomainSpec(mx=[(10, "mx.g.example")])},
    )
    options = BulkOptions(
        reuse_ttl=None, greylist_delays=(60.0,), wait_for_retries=False, catch_all_check=False
    )
    records, summary = await world.run("a@g.example\na@g.example\nA@g.example\n", options)
    assert sorted(r["line"] for r in records) == [1, 2, 3]
    assert {r["reason"] for r in records} == {"pending_retry"}
    assert summary.pending >= 2


def test_duplicates_bookkeeping() -> None:
    dups = Duplicates(remembered=1)
    dups.asked("a@x", 1)
    assert dups.follow("a@x", 5, " a@x") and dups.waiting == 1
    assert not dups.follow("b@x", 6, "b@x")
    answer = invalid_answer("a@x", "because", "invalid_syntax")
    assert dups.done(1, answer) == [(5, " a@x")] and dups.waiting == 0
    assert dups.answered("a@x") is answer
    dups.asked("b@x", 6)
    dups.done(6, answer)
    assert dups.answered("a@x") is None  # only the last `remembered` are kept
    assert entry(1, "x@acme.example", None, ("example",)).address is not None


async def test_greylisted_first_line_copies_wait_and_follow(world_factory) -> None:
    seen: set[str] = set()

    def greylist_once(rcpt: str, state) -> Scripted:
        if rcpt not in seen:
            seen.add(rcpt)
            return GREYLIST
        return ACCEPT

    world = await world_factory(
        {"mx.g.example": ("127.0.0.1", MXBehavior(rcpt_handler=greylist_once))},
        {"g.example": DomainSpec(mx=[(10, "mx.g.example")])},
    )
    options = BulkOptions(reuse_ttl=None, greylist_delays=(0.2,), catch_all_check=False)
    records, _ = await world.run("a@g.example\na@g.example\n", options)
    assert len(rcpts(world, "mx.g.example")) == 2  # the first try and its one retry
    assert [(r["line"], r["attempts"]) for r in sorted(records, key=lambda r: r["line"])] == [
        (1, 2),
        (2, 2),
    ]
