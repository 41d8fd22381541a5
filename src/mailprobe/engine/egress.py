"""Probing through the egress routes (`mailprobe.egress`): one address over the MX's
routes in turn, and the throttle slot taken for the route that will be used.

A route's own failure (its proxy refused us or is down) is never the address's answer
while another route can ask: the next route takes over and the failing one is counted
against (`RouteTable.failed`), so a route that keeps failing rests for a while. With
every route of an MX resting, the answer is unknown / proxy_error at once, naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from mailprobe.classify import Reason
from mailprobe.egress import Route, RouteTable, egress_key
from mailprobe.results import Outcome
from mailprobe.smtp import probe_address
from mailprobe.throttle import Limits, Slot, Throttle, ThrottlePolicy, ThrottleTimeout


def no_route(email: str, mx_host: str, routes: RouteTable, **evidence: Any) -> Outcome:
    """Every route of `mx_host` is out of rotation: nothing can be asked now."""
    return Outcome.failure(
        email,
        kind=Reason.PROXY_ERROR.value,
        error=f"no route to {mx_host} in rotation: {routes.resting(mx_host)}",
        mx_host=mx_host,
        **evidence,
    )


def ordered(routes: RouteTable, mx_host: str, prefer: Route | None) -> list[Route]:
    """The MX's routes to try, `prefer` (the one a slot was taken for) first."""
    candidates = routes.choose(mx_host)
    if prefer is not None and prefer in candidates:
        candidates.remove(prefer)
        candidates.insert(0, prefer)
    return candidates


async def probe_routed(
    routes: RouteTable,
    email: str,
    mx_host: str,
    *,
    prefer: Route | None = None,
    **options: Any,
) -> Outcome:
    """`smtp.probe_address` over the MX's routes: the first that is not a proxy failure."""
    candidates = ordered(routes, mx_host, prefer)
    if not candidates:
        return no_route(email, mx_host, routes, helo_domain=options.get("helo_domain"))
    outcome: Outcome | None = None
    for route in candidates:
        outcome = await probe_address(email, mx_host, route=route, **options)
        if outcome.error_kind == Reason.PROXY_ERROR.value:
            routes.failed(route, outcome.error or "proxy error")
            continue
        if outcome.stage != "connect":
            routes.worked(route)
        return outcome
    assert outcome is not None
    return outcome


async def acquire_routed(
    throttle: Throttle,
    routes: RouteTable,
    mx_host: str,
    *,
    wait: float | None = None,
    rcpts: int = 1,
    priority: bool = False,
) -> tuple[Route, Slot | None] | None:
    """A slot for `mx_host` on the first of its routes (in rotation order) whose caps have
    room: the throttle keys on (route, MX) (`egress_key`). None when every route of the
    MX is resting; a route that skips SMTP needs no slot. Raises the last route's
    ThrottleTimeout when none has room."""
    candidates = routes.choose(mx_host)
    if not candidates:
        return None
    refused: ThrottleTimeout | None = None
    for route in candidates:
        if route.skip:
            return route, None
        try:
            slot = await throttle.acquire(
                egress_key(route, mx_host), wait=wait, rcpts=rcpts, priority=priority
            )
            return route, slot
        except ThrottleTimeout as exc:  # the earliest rate token wins; None: a full slot
            if refused is None or _due(exc) < _due(refused):
                refused = exc
    assert refused is not None
    raise refused


def _due(exc: ThrottleTimeout) -> float:
    return exc.retry_after if exc.retry_after is not None else float("inf")


@dataclass(frozen=True)
class PooledPolicy(ThrottlePolicy):
    """The scheduler's view of the caps with routes: an MX reached by N routes may have N
    times its per-MX caps in flight in all, each route holding its own (the throttle
    keeps each (route, MX) within the MX's caps)."""

    routes: RouteTable | None = field(default=None, compare=False, hash=False)

    def limits_for(self, mx_host: str) -> Limits:
        base = super().limits_for(mx_host)
        n = len(self.routes.pool(mx_host)) if self.routes is not None else 1
        return base if n <= 1 else Limits(base.max_concurrency * n, base.rps * n)


def pooled(policy: ThrottlePolicy, routes: RouteTable) -> ThrottlePolicy:
    """`policy` as the scheduler should see it when some MX has several routes."""
    if all(len(pool) <= 1 for pool in (routes.default, *routes.pools.values())):
        return policy
    given = {f.name: getattr(policy, f.name) for f in fields(ThrottlePolicy)}
    return PooledPolicy(**given, routes=routes)
