"""The bulk engine's retry table, as a table: reason and counters in, the next step out.

No server, no clock: `retry.next_step` and `retry.check_step` are pure, so the policy
the README describes is pinned down here row by row.
"""

from __future__ import annotations

import pytest

from mailprobe.engine.bulk.options import BulkOptions
from mailprobe.engine.bulk.retry import (
    Alone,
    Counters,
    Final,
    Finding,
    Retry,
    Slow,
    check_step,
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
        ("too_many_recipients", 1, Retry(300.0, "greylists")),
        ("greylisted", 3, Finding(None)),
        ("policy_block", 0, Finding(None)),
    ],
)
def test_check_step_for_a_catch_all_check(reason: str, greylists: int, step: object) -> None:
    assert check_step(reason, greylists, OPTIONS) == step
