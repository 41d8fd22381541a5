"""Egress routes: which way out a probe takes to an MX, and which routes are resting.

Most cloud and home networks block outbound port 25, and servers judge the connecting
IP (its PTR, its blocklist listings), so where a probe leaves from matters as much as
what it says. A *route* is one way out:

* direct, from the host's own address, or bound to one local IP (`SMTP_SOURCE_ADDRESS`,
  one or more IPs: one route each);
* through a SOCKS proxy (`SMTP_PROXY`, or a named route in `SMTP_ROUTES`):
  ``socks5://[user:pass@]host:port`` (names resolved by us, the proxy gets an IP),
  ``socks5h://`` (the proxy resolves the MX name), ``socks4://``, ``socks4a://``.
  SOCKS, not HTTP CONNECT: SMTP is not HTTP and HTTP proxies commonly refuse CONNECT
  to port 25 (Reacher's maintainer on SOCKS5 only: "for SMTP verifications ... there's
  not way to support HTTP proxies", reacherhq/check-if-email-exists#1246).

`MX_ROUTES` maps MX host patterns to routes (``*.outlook.com=ms``, ``*=direct``;
several routes joined by ``+`` rotate). Each route is its own egress IP, so the
throttle keys on (route, MX) (`egress_key`): two proxies each get the per-MX caps,
and a penalty lands on the route that earned it. Without any route configured the
key is the MX host alone, as before.

`RouteTable` holds the choice and the routes' health: a route that fails several
times in a row (its proxy refuses or is unreachable) is taken out of rotation for a
while (`notes` says so for the run's summary). Pure: no sockets (the connection
itself is `smtp_wire.SMTPWire.connect`).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from mailprobe.address import InvalidAddress, check_hostname
from mailprobe.redact import redact_url

if TYPE_CHECKING:
    from mailprobe.config import Settings

DIRECT = "direct"  # the built-in route name: the host's own address(es)
PROXY = "proxy"  # the built-in route name of SMTP_PROXY's proxies
SKIP = "skip"  # --no-smtp: nothing is dialled, every address is answered smtp_skipped
KEY_SEPARATOR = "|"  # route name | MX host, in throttle keys
PROXY_SCHEMES = {"socks5": (5, False), "socks5h": (5, True), "socks4": (4, False),
                 "socks4a": (4, True)}  # fmt: skip
DEFAULT_FAIL_LIMIT = 3  # failures in a row that take a route out of rotation
DEFAULT_REST = 300.0  # seconds out of rotation


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """A parsed SOCKS proxy URL; `shown` never carries the password."""

    url: str
    version: int  # 4 or 5
    remote_dns: bool  # socks5h / socks4a: the proxy resolves the MX name
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def shown(self) -> str:
        return redact_url(self.url)


def parse_proxy_url(raw: str) -> ProxyURL:
    """ "socks5://user:pass@host:1080" -> ProxyURL; ValueError saying what is wrong."""
    text = raw.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{redact_url(text)!r} is not a proxy URL") from None
    scheme = parts.scheme.lower()
    if scheme not in PROXY_SCHEMES:
        raise ValueError(
            f"{redact_url(text)!r}: the scheme must be socks5://, socks5h://, socks4:// or "
            "socks4a:// (SMTP cannot go through an HTTP proxy)"
        )
    host = parts.hostname
    if not host or port is None:
        raise ValueError(f"{redact_url(text)!r} needs a host and a port (socks5://host:1080)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{redact_url(text)!r}: a proxy URL has no path or query")
    version, remote_dns = PROXY_SCHEMES[scheme]
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if version == 4 and password:
        raise ValueError(f"{redact_url(text)!r}: SOCKS4 has a user id but no password")
    return ProxyURL(text, version, remote_dns, host, port, username or None, password)


@dataclass(frozen=True, slots=True)
class Route:
    """One way out. `name` is unique in a table and appears in throttle keys."""

    name: str
    proxy: ProxyURL | None = None
    source_address: str | None = None  # a local IP to bind (direct routes)
    skip: bool = False  # --no-smtp: never dialled

    @property
    def plain(self) -> bool:
        """The host's default way out: throttle keys stay the MX host alone."""
        return self.name == DIRECT

    def describe(self) -> str:
        """For messages: the route's name and what it is, credentials redacted."""
        if self.proxy is not None:
            return f"{self.name} ({self.proxy.shown})"
        if self.source_address:
            return f"{self.name} (from {self.source_address})"
        return self.name


DIRECT_ROUTE = Route(DIRECT)
SKIP_ROUTE = Route(SKIP, skip=True)


def egress_key(route: Route | str | None, mx_host: str) -> str:
    """The throttle key for `mx_host` reached through `route`: "route|mx.example.com", or
    the MX host alone for the direct route (nothing changes without routes)."""
    name = route.name if isinstance(route, Route) else route
    if not name or name == DIRECT:
        return mx_host
    return f"{name}{KEY_SEPARATOR}{mx_host}"


def mx_of_key(key: str) -> str:
    """The MX host part of a throttle key (see `egress_key`)."""
    return key.rpartition(KEY_SEPARATOR)[2]


@dataclass(frozen=True, slots=True)
class MXRoute:
    """MX hosts matching `pattern` ("*.outlook.com", an exact host, or "*") take `routes`."""

    pattern: str
    routes: tuple[str, ...]

    def matches(self, mx_host: str) -> bool:
        host = mx_host.lower().rstrip(".")
        if self.pattern == "*":
            return True
        if self.pattern.startswith("*."):
            return host.endswith(self.pattern[1:]) or host == self.pattern[2:]
        return host == self.pattern


def _items(raw: str) -> list[str]:
    return raw.replace(",", " ").split()


def _route_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"route name {name!r}: use letters, digits, '-', '_' or '.'")
    return name


def parse_routes(raw: str) -> tuple[Route, ...]:
    """ "ms=socks5://u:p@10.0.0.5:1080, eu=192.0.2.7, plain=direct" -> named routes."""
    routes: list[Route] = []
    for item in _items(raw):
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise ValueError(f"{redact_url(item)!r} is not NAME=socks5://HOST:PORT, NAME=IP or "
                             "NAME=direct")  # fmt: skip
        name = _route_name(name)
        if name in (DIRECT, PROXY, SKIP):
            raise ValueError(f"route name {name!r} is built in: choose another")
        if any(r.name == name for r in routes):
            raise ValueError(f"route {name!r} is defined twice")
        if "://" in value:
            routes.append(Route(name, proxy=parse_proxy_url(value)))
        elif value.lower() == DIRECT:
            routes.append(Route(name))
        else:
            try:
                routes.append(Route(name, source_address=str(ipaddress.ip_address(value))))
            except ValueError:
                raise ValueError(
                    f"{item!r}: {value!r} is not a proxy URL, an IP or 'direct'"
                ) from None
    return tuple(routes)


def parse_mx_routes(raw: str) -> tuple[MXRoute, ...]:
    """ "*.outlook.com=ms, mx.acme.example=ms+direct, *=proxy" (or the lines of a file,
    read by the caller) -> patterns and the routes their MX hosts take, first match wins."""
    out: list[MXRoute] = []
    for item in _items(raw):
        pattern, sep, names = item.partition("=")
        if not sep or not names:
            raise ValueError(f"{item!r} is not PATTERN=ROUTE[+ROUTE] (e.g. *.outlook.com=ms)")
        if pattern != "*":
            bare = pattern[2:] if pattern.startswith("*.") else pattern
            try:
                host = check_hostname(bare, "MX_ROUTES")
            except InvalidAddress:
                raise ValueError(f"{item!r}: {pattern!r} is not a host pattern") from None
            pattern = ("*." if pattern.startswith("*.") else "") + host
        out.append(MXRoute(pattern, tuple(_route_name(n) for n in names.split("+"))))
    return tuple(out)


@dataclass
class _Health:
    failures: int = 0  # in a row
    resting_until: float = 0.0
    last_error: str = ""
    rests: int = 0  # times taken out of rotation in this table's life


@dataclass
class RouteTable:
    """The routes, the pools MX patterns map to, and each route's health.

    `choose(mx_host)` gives the MX's routes in rotation order, resting ones left out;
    the caller tries them in turn (e.g. until the throttle grants a slot) and reports
    `failed` (the route's own failure: its proxy) or `worked`."""

    pools: Mapping[str, tuple[Route, ...]]  # name -> routes ("direct", "proxy", named)
    mx_routes: tuple[MXRoute, ...] = ()
    default: tuple[Route, ...] = (DIRECT_ROUTE,)
    fail_limit: int = DEFAULT_FAIL_LIMIT
    rest_seconds: float = DEFAULT_REST
    clock: Callable[[], float] = time.monotonic
    _health: dict[str, _Health] = field(default_factory=dict)
    _turn: dict[tuple[Route, ...], int] = field(default_factory=dict)
    _notes: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        *,
        proxies: Iterable[str] = (),
        source_addresses: Iterable[str] = (),
        routes: Iterable[Route] = (),
        mx_routes: Iterable[MXRoute] = (),
        fail_limit: int = DEFAULT_FAIL_LIMIT,
        rest_seconds: float = DEFAULT_REST,
        skip_smtp: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> RouteTable:
        """The table the settings describe; ValueError naming an unknown route."""
        if skip_smtp:
            return cls({SKIP: (SKIP_ROUTE,)}, default=(SKIP_ROUTE,), clock=clock)
        sources = list(dict.fromkeys(source_addresses))
        if len(sources) > 1:
            direct = tuple(Route(f"{DIRECT}@{ip}", source_address=ip) for ip in sources)
        else:
            direct = (Route(DIRECT, source_address=sources[0] if sources else None),)
        urls = [parse_proxy_url(u) for u in proxies]
        proxied = tuple(
            Route(PROXY if len(urls) == 1 else f"{PROXY}{i}", proxy=p)
            for i, p in enumerate(urls, start=1)
        )
        pools: dict[str, tuple[Route, ...]] = {DIRECT: direct}
        if proxied:
            pools[PROXY] = proxied
            pools.update((r.name, (r,)) for r in proxied)
        pools.update((r.name, (r,)) for r in direct)
        for route in routes:
            pools[route.name] = (route,)
        table = tuple(mx_routes)
        for entry in table:
            for name in entry.routes:
                if name not in pools:
                    known = ", ".join(sorted(pools))
                    raise ValueError(f"{entry.pattern}: no route named {name!r} (known: {known})")
        return cls(pools, table, proxied or direct, fail_limit, rest_seconds, clock)

    @classmethod
    def from_settings(cls, settings: Settings, *, skip_smtp: bool = False) -> RouteTable:
        """The table of SMTP_PROXY, SMTP_SOURCE_ADDRESS, SMTP_ROUTES and MX_ROUTES (checked
        when the settings were read)."""
        return cls.build(
            proxies=settings.smtp_proxy,
            source_addresses=settings.smtp_source_addresses,
            routes=parse_routes(" ".join(settings.smtp_routes)),
            mx_routes=parse_mx_routes(" ".join(settings.mx_routes)),
            fail_limit=settings.route_fail_limit,
            rest_seconds=settings.route_rest,
            skip_smtp=skip_smtp or settings.no_smtp,
        )

    @property
    def routed(self) -> bool:
        """Some MX may leave by another way than the plain direct one."""
        return any(not r.plain for pool in self.pools.values() for r in pool)

    @property
    def skip_smtp(self) -> bool:
        return any(r.skip for r in self.default)

    @property
    def proxied(self) -> bool:
        """Some route goes through a proxy (then a blocked port 25 here does not matter)."""
        return any(r.proxy is not None for pool in self.pools.values() for r in pool)

    def routes(self) -> list[Route]:
        """Every distinct route, in a stable order (doctor checks each)."""
        seen: dict[str, Route] = {}
        for pool in (self.default, *self.pools.values()):
            for route in pool:
                seen.setdefault(route.name, route)
        return list(seen.values())

    def pool(self, mx_host: str) -> tuple[Route, ...]:
        """The routes configured for `mx_host`: its first matching MX_ROUTES entry's, else
        the default (SMTP_PROXY's proxies when set, else direct)."""
        for entry in self.mx_routes:
            if entry.matches(mx_host):
                return tuple(r for name in entry.routes for r in self.pools[name])
        return self.default

    def choose(self, mx_host: str) -> list[Route]:
        """The MX's routes to try, in turn: rotated one step per call, resting ones left
        out (empty when every route of the MX is resting)."""
        pool = self.pool(mx_host)
        if len(pool) > 1:
            turn = self._turn.get(pool, 0)
            self._turn[pool] = turn + 1
            pool = pool[turn % len(pool) :] + pool[: turn % len(pool)]
        now = self.clock()
        return [r for r in pool if self._rest_left(r, now) <= 0]

    def available(self, mx_host: str) -> bool:
        """Some route of `mx_host` is in rotation now (without turning the rotation)."""
        now = self.clock()
        return any(self._rest_left(r, now) <= 0 for r in self.pool(mx_host))

    def resting(self, mx_host: str) -> str:
        """Why no route of `mx_host` is in rotation (for the addresses' error)."""
        now = self.clock()
        parts = [
            f"{r.describe()} out of rotation for {self._rest_left(r, now):.0f} s more after "
            f"{self.fail_limit} failures in a row ({self._health[r.name].last_error})"
            for r in self.pool(mx_host)
            if r.name in self._health
        ]
        return "; ".join(parts) or "no route"

    def failed(self, route: Route, error: str) -> bool:
        """The route itself failed (its proxy refused or did not answer). True when that
        takes it out of rotation now."""
        health = self._health.setdefault(route.name, _Health())
        health.failures += 1
        health.last_error = error
        if health.failures < self.fail_limit or self._rest_left(route, self.clock()) > 0:
            return False
        health.resting_until = self.clock() + self.rest_seconds
        health.rests += 1
        health.failures = 0
        self._notes.append(
            f"route {route.describe()} taken out of rotation for {self.rest_seconds:g} s after "
            f"{self.fail_limit} failures in a row: {error}"
        )
        return True

    def worked(self, route: Route) -> None:
        """A connection went through the route: its failure count starts again."""
        health = self._health.get(route.name)
        if health is not None:
            health.failures = 0

    def notes(self) -> list[str]:
        """What happened to the routes in this table's life, for the run's summary."""
        return list(self._notes)

    def _rest_left(self, route: Route, now: float) -> float:
        health = self._health.get(route.name)
        return health.resting_until - now if health is not None else 0.0
