"""Settings, read once from the environment and checked at start-up.

The seed's names and defaults are kept (SMTP_HELO_DOMAIN, SMTP_MAIL_FROM,
SMTP_CONNECT_TIMEOUT, SMTP_COMMAND_TIMEOUT); the rest are ours. A bad value
raises ConfigError naming the variable, so a misconfigured worker stops at
once instead of probing with a broken identity. The seed's module constants
(``config.SMTP_HELO_DOMAIN``...) still work, resolved lazily from the checked
settings.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import platformdirs

from mailprobe.address import (
    SPECIAL_USE_DOMAINS,
    InvalidAddress,
    check_hostname,
    parse_address,
)
from mailprobe.egress import RouteTable, parse_mx_routes, parse_proxy_url, parse_routes

DEFAULT_HELO_DOMAIN = "verifier.crestwellpartners.com"


def data_dir() -> Path:
    """The user's data directory for mailprobe (~/.local/share/mailprobe on Linux, honouring
    XDG_DATA_HOME): a database and run state that do not depend on where a command runs."""
    return Path(platformdirs.user_data_path("mailprobe", appauthor=False))


def default_database_url() -> str:
    """sqlite:///<data_dir>/mailprobe.db, unless DATABASE_URL or DATABASE_PATH says otherwise."""
    return f"sqlite:///{(data_dir() / 'mailprobe.db').as_posix()}"


@dataclass(frozen=True, slots=True)
class MXLimit:
    """Caps for MX hosts matching `pattern` ("*.google.com" or an exact host)."""

    pattern: str
    max_concurrency: int
    rps: float

    def matches(self, mx_host: str) -> bool:
        host = mx_host.lower().rstrip(".")
        if self.pattern.startswith("*."):
            return host.endswith(self.pattern[1:]) or host == self.pattern[2:]
        return host == self.pattern


class ConfigError(ValueError):
    """A setting has a value mailprobe cannot run with; `variable` names it."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, with the environment variable named per field."""

    smtp_helo_domain: str = DEFAULT_HELO_DOMAIN  # SMTP_HELO_DOMAIN
    smtp_mail_from: str = f"bounce@{DEFAULT_HELO_DOMAIN}"  # SMTP_MAIL_FROM
    smtp_connect_timeout: float = 10.0  # SMTP_CONNECT_TIMEOUT, seconds
    smtp_command_timeout: float = 10.0  # SMTP_COMMAND_TIMEOUT, seconds per reply
    smtp_port: int = 25  # SMTP_PORT
    smtp_probe_deadline: float = 60.0  # SMTP_PROBE_DEADLINE, seconds for a whole probe
    smtp_source_address: str | None = None  # SMTP_SOURCE_ADDRESS, local IP to bind
    smtp_starttls: bool = True  # SMTP_STARTTLS, upgrade when the server offers it
    smtp_pipelining: bool = True  # SMTP_PIPELINING, group a transaction when offered
    # SMTP_SESSION_MAX_REFUSALS: refused commands one pipelined session risks before the
    # rest goes to a new one (0: no limit); see engine/bulk/session.py `_grouped`.
    smtp_session_max_refusals: int = 9
    smtp_tls_verify: bool = False  # SMTP_TLS_VERIFY, check the MX certificate
    smtp_tls_cafile: str | None = None  # SMTP_TLS_CAFILE, extra CA bundle
    # DNS
    dns_nameservers: tuple[str, ...] = ()  # DNS_NAMESERVERS, "host[:port]" list; () = resolv.conf
    dns_timeout: float = 5.0  # DNS_TIMEOUT, seconds for one lookup (all tries)
    dns_max_timeout: float = 30.0  # DNS_MAX_TIMEOUT, seconds of patience for a slow domain
    mx_cache_min_ttl: int = 300  # MX_CACHE_MIN_TTL, seconds: floor on a record's TTL
    mx_cache_max_ttl: int = 86400  # MX_CACHE_MAX_TTL, seconds: ceiling on a record's TTL
    mx_negative_ttl: int = 600  # MX_NEGATIVE_TTL, ceiling on NXDOMAIN / no-MX SOA TTL; null MX
    mx_error_ttl: int = 30  # MX_ERROR_TTL, seconds to remember SERVFAIL / timeout (0-300)
    reuse_unknown_ttl: int = 300  # REUSE_UNKNOWN_TTL, seconds a stored `unknown` may stand
    mx_dead_ttl: float = 300.0  # MX_DEAD_TTL, seconds an MX we could not reach is tried last
    # Storage and queue
    # DATABASE_URL (or the seed's DATABASE_PATH); default: mailprobe.db in data_dir()
    database_url: str = field(default_factory=default_database_url)
    redis_url: str | None = None  # REDIS_URL; None = everything in-process
    # Throttles: the seed's names and defaults
    global_max_concurrency: int = 12  # GLOBAL_MAX_CONCURRENCY
    per_mx_max_concurrency_default: int = 2  # PER_MX_MAX_CONCURRENCY_DEFAULT
    global_rps: float = 6.0  # GLOBAL_RPS
    per_mx_rps_default: float = 1.0  # PER_MX_RPS_DEFAULT
    mx_limits: tuple[MXLimit, ...] = ()  # MX_LIMITS, "*.google.com=5:2,..." or "@file"
    # PER_MX_CONNECT_RPS: new connections a second per MX (default: the MX's RCPT rate)
    per_mx_connect_rps: float | None = None
    # THROTTLE_BURST_SECONDS: a rate cap lets this many seconds' worth of RCPTs go at once
    # (at least one): a pipelined group at a high rate, never more than burst + rps * T
    throttle_burst_seconds: float = 0.2
    throttle_wait: float = 30.0  # THROTTLE_WAIT, seconds to wait for a slot before rescheduling
    # THROTTLE_OUTAGE_LIMIT: seconds `verify` waits for a lost throttle Redis before it stops
    throttle_outage_limit: float = 300.0
    # DATABASE_OUTAGE_LIMIT: seconds `verify` keeps results while the database refuses writes
    database_outage_limit: float = 120.0
    probe_freemail: bool = False  # PROBE_FREEMAIL: queue probes of gmail.com & co. too
    # SPECIAL_USE_ALLOWED: special-use names ("test,example") probed anyway, for staging
    special_use_allowed: tuple[str, ...] = ()
    # Greylisting (bulk verify): first retry when the reply gives no wait, and the
    # longest greylisting waited out (postgrey's default delay is 300 s)
    greylist_first_retry: float = 30.0  # GREYLIST_FIRST_RETRY, seconds
    greylist_max_delay: float = 900.0  # GREYLIST_MAX_DELAY, seconds
    # Egress routes (mailprobe.egress): where probes leave from
    smtp_proxy: tuple[str, ...] = ()  # SMTP_PROXY, socks5://[user:pass@]host:port, one or more
    smtp_source_addresses: tuple[str, ...] = ()  # SMTP_SOURCE_ADDRESS, every IP it lists
    smtp_routes: tuple[str, ...] = ()  # SMTP_ROUTES, "ms=socks5://h:1080, eu=192.0.2.7"
    mx_routes: tuple[str, ...] = ()  # MX_ROUTES, "*.outlook.com=ms,*=direct" or "@file"
    route_fail_limit: int = 3  # ROUTE_FAIL_LIMIT, failures in a row that rest a route
    route_rest: float = 300.0  # ROUTE_REST, seconds a failing route is out of rotation
    port25_check: bool = True  # PORT25_CHECK, verify checks direct port 25 before a run
    no_smtp: bool = False  # NO_SMTP (--no-smtp): answer from DNS, syntax and lists alone

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        helo = _hostname(env, "SMTP_HELO_DOMAIN", DEFAULT_HELO_DOMAIN)
        connect = _positive_float(env, "SMTP_CONNECT_TIMEOUT", 10.0)
        command = _positive_float(env, "SMTP_COMMAND_TIMEOUT", 10.0)
        deadline = _positive_float(env, "SMTP_PROBE_DEADLINE", 60.0)
        if deadline < max(connect, command):
            raise ConfigError(
                "SMTP_PROBE_DEADLINE",
                f"{deadline:g}s is shorter than a single connect or command timeout",
            )
        dns_timeout = _positive_float(env, "DNS_TIMEOUT", 5.0)
        dns_max_timeout = _positive_float(env, "DNS_MAX_TIMEOUT", max(30.0, dns_timeout))
        if dns_max_timeout < dns_timeout:
            raise ConfigError(
                "DNS_MAX_TIMEOUT", f"{dns_max_timeout:g}s is shorter than DNS_TIMEOUT"
            )
        return cls(
            smtp_helo_domain=helo,
            smtp_mail_from=_mail_from(env, "SMTP_MAIL_FROM", f"bounce@{helo}"),
            smtp_connect_timeout=connect,
            smtp_command_timeout=command,
            smtp_port=_port(env, "SMTP_PORT", 25),
            smtp_probe_deadline=deadline,
            smtp_source_address=(_ips(env, "SMTP_SOURCE_ADDRESS") or (None,))[0],
            smtp_starttls=_bool(env, "SMTP_STARTTLS", True),
            smtp_pipelining=_bool(env, "SMTP_PIPELINING", True),
            smtp_session_max_refusals=_int(env, "SMTP_SESSION_MAX_REFUSALS", 9, low=0),
            smtp_tls_verify=_bool(env, "SMTP_TLS_VERIFY", False),
            smtp_tls_cafile=_existing_file_or_none(env, "SMTP_TLS_CAFILE"),
            dns_nameservers=_nameservers(env, "DNS_NAMESERVERS"),
            dns_timeout=dns_timeout,
            dns_max_timeout=dns_max_timeout,
            mx_cache_min_ttl=_int(env, "MX_CACHE_MIN_TTL", 300),
            mx_cache_max_ttl=_int(env, "MX_CACHE_MAX_TTL", 86400),
            mx_negative_ttl=_int(env, "MX_NEGATIVE_TTL", 600),
            mx_dead_ttl=_positive_float(env, "MX_DEAD_TTL", 300.0),
            # RFC 2308 §7.1 and RFC 9520 §3.2 ("resolution failures MUST NOT be cached for
            # longer than 5 minutes"), https://www.rfc-editor.org/rfc/rfc9520#section-3.2.
            # 30 s as KumoMTA's transient MX failure TTL, kept apart from NXDOMAIN's:
            # https://docs.kumomta.com/reference/kumo.dns/set_mx_transient_negative_cache_ttl/
            mx_error_ttl=_int(env, "MX_ERROR_TTL", 30, 0, 300, "seconds (RFC 9520: at most 300)"),
            reuse_unknown_ttl=_int(env, "REUSE_UNKNOWN_TTL", 300, 0),
            database_url=_database_url(env),
            redis_url=_redis_url(env, "REDIS_URL"),
            global_max_concurrency=_int(env, "GLOBAL_MAX_CONCURRENCY", 12),
            per_mx_max_concurrency_default=_int(env, "PER_MX_MAX_CONCURRENCY_DEFAULT", 2),
            global_rps=_positive_float(env, "GLOBAL_RPS", 6.0),
            per_mx_rps_default=_positive_float(env, "PER_MX_RPS_DEFAULT", 1.0),
            mx_limits=_mx_limits(env, "MX_LIMITS"),
            per_mx_connect_rps=_optional_positive_float(env, "PER_MX_CONNECT_RPS"),
            throttle_burst_seconds=_burst_seconds(env, "THROTTLE_BURST_SECONDS"),
            throttle_wait=_positive_float(env, "THROTTLE_WAIT", 30.0),
            throttle_outage_limit=_positive_float(env, "THROTTLE_OUTAGE_LIMIT", 300.0),
            database_outage_limit=_positive_float(env, "DATABASE_OUTAGE_LIMIT", 120.0),
            probe_freemail=_bool(env, "PROBE_FREEMAIL", False),
            special_use_allowed=_special_use(env, "SPECIAL_USE_ALLOWED"),
            greylist_first_retry=_positive_float(env, "GREYLIST_FIRST_RETRY", 30.0),
            greylist_max_delay=_positive_float(env, "GREYLIST_MAX_DELAY", 900.0),
            **_egress(env),
        )

    def as_env(self) -> dict[str, str]:
        """The settings under their environment names (for display and child processes)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            if isinstance(value, bool):
                out[f.name.upper()] = str(int(value))
            elif isinstance(value, tuple):
                out[f.name.upper()] = ",".join(
                    f"{v.pattern}={v.max_concurrency}:{v.rps:g}" if isinstance(v, MXLimit) else v
                    for v in value
                )
            else:
                out[f.name.upper()] = str(value)
        if out.pop("SMTP_SOURCE_ADDRESSES", None):  # read back from SMTP_SOURCE_ADDRESS
            out["SMTP_SOURCE_ADDRESS"] = ",".join(self.smtp_source_addresses)
        return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; `reload_settings()` after changing the environment."""
    return Settings.from_env()


def reload_settings() -> Settings:
    get_settings.cache_clear()
    return get_settings()


def __getattr__(name: str) -> Any:
    """Seed compatibility: `config.SMTP_HELO_DOMAIN` and friends."""
    field = name.lower()
    if name.isupper() and field in Settings.__dataclass_fields__:
        return getattr(get_settings(), field)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- parsers: each names its variable in the error ---------------------------


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(name, f"{raw!r} must be a positive, finite number")
    return value


def _burst_seconds(env: Mapping[str, str], name: str) -> float:
    """0 (a burst of one RCPT) up to 10 seconds' worth of a rate."""
    raw = _raw(env, name)
    if raw is None:
        return 0.2
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not a number") from None
    if not 0 <= value <= 10:
        raise ConfigError(name, f"{raw!r} must be between 0 and 10 seconds")
    return value


def _optional_positive_float(env: Mapping[str, str], name: str) -> float | None:
    return None if _raw(env, name) is None else _positive_float(env, name, 1.0)


def _int(env: Mapping[str, str], name: str, default: int, low: int = 1, high: int | None = None,
         what: str = "") -> int:  # fmt: skip
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        bounds = f"{low}-{high}" if high is not None else f"at least {low}"
        raise ConfigError(name, f"{value} is not {what or 'a whole number'} ({bounds})")
    return value


# The parsers, for faces with settings of their own (`mailprobe.serve.config`): one way to
# read a number from the environment, one wording of its error.
env_raw = _raw
env_int = _int
env_positive_float = _positive_float


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    return _int(env, name, default, 1, 65535, "a TCP port")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _raw(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"{raw!r} is not a boolean (use 1/0, true/false, yes/no)")


def _hostname(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        host = check_hostname(raw, name)
    except InvalidAddress as exc:
        raise ConfigError(name, str(exc)) from None
    if "." not in host:
        raise ConfigError(name, f"{raw!r} must be a fully qualified domain name")
    return host


def _mail_from(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return parse_address(raw).wire
    except InvalidAddress as exc:
        raise ConfigError(name, str(exc)) from None


def _special_use(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """ "test, example" -> ("test", "example"): names of the IANA special-use registry
    (address.SPECIAL_USE_DOMAINS) whose addresses are probed rather than refused."""
    raw = _raw(env, name)
    if raw is None:
        return ()
    names = []
    for item in raw.replace(",", " ").split():
        entry = item.strip(".").lower()
        if entry not in SPECIAL_USE_DOMAINS:
            known = ", ".join(SPECIAL_USE_DOMAINS)
            raise ConfigError(name, f"{item!r} is not a special-use domain name (one of {known})")
        if entry not in names:
            names.append(entry)
    return tuple(names)


def _existing_file_or_none(env: Mapping[str, str], name: str) -> str | None:
    raw = _raw(env, name)
    if raw is None:
        return None
    if not os.path.isfile(raw):
        raise ConfigError(name, f"{raw!r} is not a readable file")
    return raw


def parse_nameserver(entry: str) -> tuple[str, int]:
    """ "10.0.0.53", "127.0.0.1:5353", "[::1]:53" or "::1" -> (IP, port); ValueError if not."""
    text = entry.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"nameserver {entry!r} is not [IPv6]:port")
        port = rest[1:] or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = str(ipaddress.ip_address(host))
        port_no = int(port)
    except ValueError:
        raise ValueError(
            f"nameserver {entry!r} is not an IP address with an optional :port"
        ) from None
    if not 1 <= port_no <= 65535:
        raise ValueError(f"nameserver {entry!r} has no valid port")
    return address, port_no


def _nameservers(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """ "10.0.0.53, 127.0.0.1:5353, [::1]:53" -> normalised "host:port" strings."""
    raw = _raw(env, name)
    if raw is None:
        return ()
    out = []
    for item in raw.replace(",", " ").split():
        try:
            host, port = parse_nameserver(item)
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from None
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return tuple(out)


def _database_url(env: Mapping[str, str]) -> str:
    url = _raw(env, "DATABASE_URL")
    if url is not None:
        if "://" not in url:
            raise ConfigError("DATABASE_URL", f"{url!r} is not a URL (e.g. sqlite:///data/x.db)")
        return url
    path = _raw(env, "DATABASE_PATH")
    if path is not None:
        return f"sqlite:///{path}"
    return default_database_url()


def _redis_url(env: Mapping[str, str], name: str) -> str | None:
    raw = _raw(env, name)
    if raw is None:
        return None
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(name, f"{raw!r} is not a redis://, rediss:// or unix:// URL")
    return raw


def _mx_limits(env: Mapping[str, str], name: str) -> tuple[MXLimit, ...]:
    """ "*.google.com=5:2, mx.acme.example=1:0.5" (concurrency:rps), or "@path" to such lines."""
    raw = _raw(env, name)
    if raw is None:
        return ()
    if raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as fh:
                raw = " ".join(line.split("#", 1)[0] for line in fh)
        except OSError as exc:
            raise ConfigError(name, f"cannot read {raw[1:]!r}: {exc}") from None
    limits = []
    for item in raw.replace(",", " ").split():
        pattern, _, caps = item.partition("=")
        conc, _, rps = caps.partition(":")
        try:
            host = check_hostname(pattern[2:] if pattern.startswith("*.") else pattern, name)
            limit = MXLimit(
                ("*." if pattern.startswith("*.") else "") + host, int(conc), float(rps)
            )
        except (InvalidAddress, ValueError):
            raise ConfigError(
                name, f"{item!r} is not PATTERN=CONCURRENCY:RPS (e.g. *.google.com=5:2)"
            ) from None
        if limit.max_concurrency < 1 or not limit.rps > 0:
            raise ConfigError(name, f"{item!r}: caps must be positive")
        limits.append(limit)
    return tuple(limits)


# --- egress routes (mailprobe.egress) ------------------------------------------


def _egress(env: Mapping[str, str]) -> dict[str, Any]:
    """SMTP_PROXY, SMTP_SOURCE_ADDRESS (all of them), SMTP_ROUTES and MX_ROUTES, checked
    together: MX_ROUTES may only name routes that exist."""
    proxies = _proxies(env, "SMTP_PROXY")
    routes_raw = _raw(env, "SMTP_ROUTES") or ""
    try:
        routes = parse_routes(routes_raw)
    except ValueError as exc:
        raise ConfigError("SMTP_ROUTES", str(exc)) from None
    mx_raw = _file_or_value(env, "MX_ROUTES")
    try:
        mx_routes = parse_mx_routes(mx_raw)
        RouteTable.build(
            proxies=proxies,
            source_addresses=_ips(env, "SMTP_SOURCE_ADDRESS"),
            routes=routes,
            mx_routes=mx_routes,
        )
    except ValueError as exc:
        raise ConfigError("MX_ROUTES", str(exc)) from None
    return {
        "smtp_proxy": proxies,
        "smtp_source_addresses": _ips(env, "SMTP_SOURCE_ADDRESS"),
        "smtp_routes": tuple(routes_raw.replace(",", " ").split()),
        "mx_routes": tuple(mx_raw.replace(",", " ").split()),
        "route_fail_limit": _int(env, "ROUTE_FAIL_LIMIT", 3),
        "route_rest": _positive_float(env, "ROUTE_REST", 300.0),
        "port25_check": _bool(env, "PORT25_CHECK", True),
        "no_smtp": _bool(env, "NO_SMTP", False),
    }


def _proxies(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = _raw(env, name)
    if raw is None:
        return ()
    urls = raw.replace(",", " ").split()
    for url in urls:
        try:
            parse_proxy_url(url)
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from None
    return tuple(urls)


def _ips(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """ "192.0.2.7, 192.0.2.8" -> the IPs, normalised, without repeats."""
    raw = _raw(env, name)
    if raw is None:
        return ()
    out: list[str] = []
    for item in raw.replace(",", " ").split():
        try:
            ip = str(ipaddress.ip_address(item))
        except ValueError:
            raise ConfigError(name, f"{item!r} is not an IP address") from None
        if ip not in out:
            out.append(ip)
    return tuple(out)


def _file_or_value(env: Mapping[str, str], name: str) -> str:
    """The variable's value, or the lines of the file it names with "@path" ("#" comments)."""
    raw = _raw(env, name) or ""
    if raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as fh:
                raw = " ".join(line.split("#", 1)[0] for line in fh)
        except OSError as exc:
            raise ConfigError(name, f"cannot read {raw[1:]!r}: {exc}") from None
    return raw
