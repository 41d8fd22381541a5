"""Greylisting at the server's pace, against scripted greylisters on loopback.

The reply's hint sets the retry, the delay that got through is learned per MX (and
read back from the store by the next run), the catch-all check's greylisting clock
runs with the real addresses', and the retries of one MX go out together.
"""

from __future__ import annotations

import io
from typing import Any

from mailprobe.behavior import BehaviorCache
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, verify
from mailprobe.engine.bulk.catchall import CatchAll
from mailprobe.inputs import read_addresses
from mailprobe.report import render_record
from mailprobe.store.queries import load_mx_behavior
from mailprobe.testing.dnsd import DomainSpec
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, Scripted
from tests.test_bulk import World, by_email, world_factory  # noqa: F401 (a fixture)

HOST = "mx.grey.example"
# A hosting provider's greylisting reply with its wait (see the corpus entry
# hosting-rcpt-451-greylisted-try-again-in-900-seconds); {wait}: the seconds left.
HINTED = Scripted(451, "Greylisted, please try again in {wait} seconds")


async def run(world: World, text: str, options: BulkOptions, behavior: BehaviorCache,
              **env: str) -> list[dict[str, Any]]:  # fmt: skip
    """One `verify` run with its own behaviour cache (what it learns goes to the store)."""
    records: list[dict[str, Any]] = []
    ctx = Context.create(world.settings(**env), store=world.store, behavior=behavior)
    try:
        lines = read_addresses(io.StringIO(text))
        await verify(lines, lambda la: records.append(render_record(la)), ctx=ctx, options=options)
    finally:
        await ctx.aclose()
    return records


async def greylister(world_factory: Any, behavior: MXBehavior, domains: int = 1) -> World:  # noqa: F811
    zone = {f"d{i}.example": DomainSpec(mx=[(10, HOST)]) for i in range(domains)}
    world: World = await world_factory({HOST: ("127.0.0.1", behavior)}, zone)
    return world


async def test_the_reply_hint_sets_the_retry(world_factory: Any) -> None:  # noqa: F811
    boxes = {"real@d0.example": ACCEPT}
    server = MXBehavior(mailboxes=boxes, greylist_seconds=0.6, greylist_reply=HINTED)
    world = await greylister(world_factory, server)
    behavior = BehaviorCache()
    # A fixed schedule of 5 s: the server's "try again in 1 seconds" wins over it.
    options = BulkOptions(reuse_ttl=None, greylist_delays=(5.0, 5.0))
    records = await run(world, "real@d0.example\nfake@d0.example\n", options, behavior)
    got = by_email(records)
    assert (got["real@d0.example"]["verdict"], got["real@d0.example"]["attempts"]) == (
        "deliverable", 2)  # fmt: skip
    assert got["fake@d0.example"]["verdict"] == "undeliverable"
    learned = behavior.greylist_delay(HOST)
    assert learned is not None and 1.0 <= learned < 2.5  # the hint's 1 s, not the 5 s


async def test_the_learned_delay_starts_the_next_run_from_the_store(world_factory: Any) -> None:  # noqa: F811
    boxes = {f"u{i}@d0.example": ACCEPT for i in range(6)}
    world = await greylister(world_factory, MXBehavior(mailboxes=boxes, greylist_seconds=0.5))
    options = BulkOptions(reuse_ttl=None, catch_all_check=False, greylist_first_retry=0.2,
                          greylist_max_delay=5.0)  # fmt: skip
    first = await run(world, "u0@d0.example\nu1@d0.example\nu2@d0.example\n", options,
                      BehaviorCache())  # fmt: skip
    assert {r["reason"] for r in first} == {"catch_all_unknown"}
    # one scout finds the delay (0.2 s, 0.23 s, 0.26 s...), the others wait behind it and
    # go once, at their own first refusal plus the delay it found
    assert sorted(r["attempts"] for r in first)[:2] == [2, 2]
    assert max(r["attempts"] for r in first) > 2
    with world.store.session() as session:
        stored = load_mx_behavior(session, [HOST])[HOST]
    assert 0.5 <= stored["greylist_passed_after"] < 1.5
    # A new process (an empty behaviour cache) reads it back: one retry is enough.
    second = await run(world, "u3@d0.example\nu4@d0.example\nu5@d0.example\n", options,
                       BehaviorCache())  # fmt: skip
    assert [(r["reason"], r["attempts"]) for r in second] == [("catch_all_unknown", 2)] * 3


def test_the_catch_all_check_keeps_its_local_part_for_the_run() -> None:
    tracker = CatchAll()
    first = tracker.start("acme.example")
    tracker.abandon()  # the session broke before the check was answered
    again = tracker.start("acme.example")
    assert again.address.local == first.address.local
    assert CatchAll().start("acme.example").address.local != first.address.local


async def test_a_check_refused_for_batching_is_greylisted_with_the_real_addresses(
    world_factory: Any,  # noqa: F811
) -> None:
    # The server takes 3 RCPTs a session: the check, after the domain's 3 addresses, is
    # refused (452 4.5.3) for our batching. It must be asked again at once, so that its
    # greylisting clock starts with theirs, not a retry round later on a clock of its own.
    boxes = {f"u{i}@d0.example": ACCEPT for i in range(3)}
    behavior = MXBehavior(mailboxes=boxes, greylist_seconds=0.5, max_rcpts_per_session=3)
    world = await greylister(world_factory, behavior)
    options = BulkOptions(reuse_ttl=None, greylist_delays=(1.0, 1.0, 1.0))
    records = await run(world, "u0@d0.example\nu1@d0.example\nu2@d0.example\n", options,
                        BehaviorCache())  # fmt: skip
    assert {(r["verdict"], r["catch_all"]) for r in records} == {("deliverable", False)}
    seen = world.servers[HOST].greylist  # triplet -> first seen
    check = [t for key, t in seen.items() if key[2].startswith("mp-")]
    real = [t for key, t in seen.items() if not key[2].startswith("mp-")]
    assert len(check) == 1  # one local part for the run
    assert check[0] - max(real) < 0.5  # the same round, not the next retry (1 s later)


async def test_retries_of_one_mx_go_out_together(world_factory: Any) -> None:  # noqa: F811
    boxes = {f"u{i}@d0.example": ACCEPT for i in range(12)}
    world = await greylister(world_factory, MXBehavior(mailboxes=boxes, greylist_seconds=0.3))
    options = BulkOptions(reuse_ttl=None, catch_all_check=False, rcpts_per_session=4,
                          greylist_delays=(0.5, 0.5))  # fmt: skip
    text = "".join(f"u{i}@d0.example\n" for i in range(12))
    records = await run(world, text, options, BehaviorCache(), PER_MX_MAX_CONCURRENCY_DEFAULT="2")
    assert [(r["reason"], r["attempts"]) for r in records] == [("catch_all_unknown", 2)] * 12
    # 3 sessions of 4 greylisted, then their retries batched the same way: 3 more, not
    # a session per timer (a burst that real servers answer with 421)
    assert world.servers[HOST].record.rcpts_per_connection() == [4] * 6
