"""What a bulk run does when an egress route fails (see `mailprobe.egress`).

A route's proxy failing is never the MX's doing nor the address's: it is counted against
the route (`RouteTable.failed`: one that keeps failing rests a while), and the
recipients go again by another route while one is in rotation (a few times); else
they are answered unknown / proxy_error, naming the proxy (credentials redacted).
"""

from __future__ import annotations

from collections.abc import Iterable

from mailprobe.egress import Route, RouteTable
from mailprobe.engine.bulk.reports import Engine
from mailprobe.engine.bulk.state import MXLane, take
from mailprobe.engine.bulk.targets import Recipient
from mailprobe.engine.egress import no_route
from mailprobe.results import Outcome
from mailprobe.smtp import ErrorKind

MAX_ROUTE_BOUNCES = 2  # sessions a recipient may lose to failing routes before its answer


def proxy_failed(
    engine: Engine,
    routes: RouteTable,
    lane: MXLane,
    route: Route,
    recipients: Iterable[Recipient],
    error: str,
) -> None:
    routes.failed(route, error)
    for r in recipients:
        r.bounces += 1
        if r.bounces <= MAX_ROUTE_BOUNCES and routes.available(lane.host):
            engine.route(r)
        else:
            engine.answered(
                r,
                Outcome.failure(
                    r.address.normalized,
                    kind=ErrorKind.PROXY.value,
                    error=error,
                    mx_host=lane.host,
                ),
            )


def answer_no_route(engine: Engine, routes: RouteTable, lane: MXLane, count: int) -> None:
    """Every route of the lane's MX is resting: its next recipients are answered at once."""
    for r in take(lane.recipients, count):
        engine.answered(r, no_route(r.address.normalized, lane.host, routes))
