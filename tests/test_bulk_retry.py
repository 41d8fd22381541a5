"""The bulk engine's retry table, as a table: reason and counters in, the next step out.

No server, no clock: `retry.next_step` and `retry.check_step` are pure, so the policy
the README describes is pinned down here row by row.
"""

from __future__ import annotations

import pytest

from mailprobe.engine.bulk.options import BulkOptions
from mailprobe.engine.bulk.retry import (
    Alone,
    Behind,
    Counters,
    Final,
    Finding,
    Pace,
    Retry,
    Slow,
    check_step,
    greylist_wait,
    next_step,
)

OPTIONS = BulkOptions(greylist_delays=(60.0, 300.0, 900.0), temp_delays=(30.0, 120.0))


@pytest.mark.parametrize(
    ("reason", "counters", "step"),
    [
        ("too_many_recipients", Counters(), Alone()),
        ("too_many_recipients", Counters(batching_retries=1), Alone()),
        ("too_many_recipients", Counters(batching_retries=2), Final()),
        ("greylisted", Counters(), Retry(60.0, "greylists")),
        ("greylisted", Counters(greylists=2), Retry(900.0, "greylists")),
        ("greylisted", Counters(greylists=3), Final()),
        ("rate_limited", Counters(), Retry(30.0, "temps", penalize=True)),
        ("service_unavailable", Counters(temps=1), Retry(120.0, "temps", penalize=True)),
        ("service_unavailable", Counters(temps=2), Final(penalize=True)),
        ("timeout", Counters(), Slow()),
        ("timeout", Counters(slow=True), Final()),
        ("temp_failure", Counters(), Retry(30.0, "temps")),
        ("connection_failed", Counters(temps=1), Retry(120.0, "temps")),
        ("dns_error", Counters(temps=2), Final()),
        ("accepted", Counters(), Final()),
        ("mailbox_not_found", Counters(), Final()),
        ("policy_block", Counters(), Final()),
    ],
)
def test_next_step_for_an_input_address(reason: str, counters: Counters, step: object) -> None:
    assert next_step(reason, counters, OPTIONS) == step


def test_no_slow_lane_when_switched_off() -> None:
    options = BulkOptions(slow_retry=False)
    assert next_step("timeout", Counters(), options) == Final()


@pytest.mark.parametrize(
    ("reason", "greylists", "step"),
    [
        ("accepted", 0, Finding(True)),
        ("mailbox_not_found", 0, Finding(False)),
        ("greylisted", 0, Retry(60.0, "greylists")),
        ("too_many_recipients", 1, Alone()),  # our batching: again at once, not 300 s later
        ("temp_failure", 1, Retry(300.0, "greylists")),
        ("greylisted", 3, Finding(None)),
        ("policy_block", 0, Finding(None)),
    ],
)
def test_check_step_for_a_catch_all_check(reason: str, greylists: int, step: object) -> None:
    assert check_step(reason, greylists, OPTIONS) == step


def test_a_check_refused_for_batching_twice_goes_on_the_greylisting_schedule() -> None:
    step = check_step("too_many_recipients", 0, OPTIONS, batching_retries=2)
    assert step == Retry(60.0, "greylists")


def test_a_greylisted_check_follows_the_reply_hint_like_the_real_addresses() -> None:
    pace = Pace(hint=45.0)
    assert check_step("greylisted", 0, GROWING, pace=pace) == Retry(46.0, "greylists")
    assert next_step("greylisted", Counters(), GROWING, pace) == Retry(46.0, "greylists")


# The greylisting schedule without a fixed --greylist-delays: hint, learned delay, growth.
GROWING = BulkOptions(greylist_first_retry=30.0, greylist_max_delay=900.0)


@pytest.mark.parametrize(
    ("retries", "waited", "pace", "wait"),
    [
        # nothing known: 30 s, then 1.5x the time since the first refusal, each time
        (0, 0.0, Pace(), 30.0),
        (1, 30.0, Pace(), 15.0),  # due at 45 s
        (2, 45.0, Pace(), 22.5),  # due at 67.5 s
        (2, 60.0, Pace(), 15.0),  # a late retry does not push the schedule back
        (9, 800.0, Pace(), 100.0),  # the last one lands on the maximum (900 s)
        (10, 900.0, Pace(), None),  # waited the maximum out: unknown
        # the MX's learned delay is where the first retry goes
        (0, 0.0, Pace(learned=300.0), 300.0),
        (1, 300.0, Pace(learned=300.0), 150.0),  # still greylisted: grow from there
        # the reply's own word, a little past it (postgrey counts whole seconds)
        (0, 0.0, Pace(hint=300.0, learned=60.0), 301.0),
        (0, 0.0, Pace(hint=4.0), 4.2),
        (1, 300.0, Pace(hint=5.0), 5.25),
        # a server that wants longer than we wait: unknown now, not after 15 minutes
        (0, 0.0, Pace(hint=3600.0), None),
        (1, 850.0, Pace(hint=100.0), None),
    ],
)
def test_greylist_wait(retries: int, waited: float, pace: Pace, wait: float | None) -> None:
    assert greylist_wait(retries, waited, pace, GROWING) == wait


def test_a_fixed_schedule_is_kept_but_a_hint_wins() -> None:
    fixed = BulkOptions(greylist_delays=(60.0, 300.0))
    assert greylist_wait(0, 0.0, Pace(learned=10.0), fixed) == 60.0
    assert greylist_wait(1, 60.0, Pace(hint=120.0), fixed) == 121.0
    assert greylist_wait(2, 360.0, Pace(hint=1.0), fixed) is None


def test_behind_a_scout_until_the_maximum() -> None:
    behind = Pace(behind=True)
    assert next_step("greylisted", Counters(), GROWING, behind) == Behind()
    assert check_step("greylisted", 0, GROWING, pace=behind) == Behind()
    assert next_step("greylisted", Counters(greylists=1, waited=900.0), GROWING, behind) == Final()


def test_the_scout_searches_on_a_finer_schedule() -> None:
    assert greylist_wait(1, 30.0, Pace(scout=True), GROWING) == pytest.approx(4.5)  # at 34.5 s
    assert greylist_wait(1, 30.0, Pace(), GROWING) == pytest.approx(15.0)  # at 45 s
