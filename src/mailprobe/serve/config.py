"""The HTTP server's own settings, read from the environment (SERVE_*, WEBHOOK_*) at start.

Bad values raise ConfigError naming the variable, like the rest of mailprobe's settings.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

from mailprobe.config import ConfigError
from mailprobe.config import env_int as _int
from mailprobe.config import env_positive_float as _float
from mailprobe.config import env_raw as _raw

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ServeConfig:
    max_body_bytes: int = 20 * 1024 * 1024  # SERVE_MAX_BODY_BYTES: a request body's bound
    max_rows: int = 100_000  # SERVE_MAX_ROWS: input lines in one job
    rate_limit: int = 600  # SERVE_RATE_LIMIT: requests a minute per API key (or client); 0: off
    job_concurrency: int = 2  # SERVE_JOB_CONCURRENCY: jobs run at once in this process
    max_timeout: float = 300.0  # SERVE_MAX_TIMEOUT: the longest `timeout` a caller may ask
    # WEBHOOK_ALLOW_PRIVATE: networks a webhook may target although private or loopback
    # ("127.0.0.0/8,10.0.0.0/8"; "*" for all). Default none: no SSRF through a callback.
    webhook_allow: tuple[Network, ...] = ()
    webhook_allow_all: bool = False
    webhook_timeout: float = 10.0  # WEBHOOK_TIMEOUT: seconds for one delivery attempt
    webhook_max_attempts: int = 8  # WEBHOOK_MAX_ATTEMPTS
    webhook_backoff: float = 2.0  # WEBHOOK_BACKOFF: first retry's delay, doubled each time
    webhook_max_backoff: float = 600.0  # WEBHOOK_MAX_BACKOFF
    auth: bool = True  # False only with `mailprobe serve --no-auth`
    require_key: bool = False  # a public --host: a key is needed even when none is left

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, auth: bool = True, require_key: bool = False
    ) -> ServeConfig:
        env = os.environ if env is None else env
        d = cls()
        allow, allow_all = _networks(env, "WEBHOOK_ALLOW_PRIVATE")
        return cls(
            max_body_bytes=_int(env, "SERVE_MAX_BODY_BYTES", d.max_body_bytes, 1),
            max_rows=_int(env, "SERVE_MAX_ROWS", d.max_rows, 1),
            rate_limit=_int(env, "SERVE_RATE_LIMIT", d.rate_limit, 0),
            job_concurrency=_int(env, "SERVE_JOB_CONCURRENCY", d.job_concurrency, 1),
            max_timeout=_float(env, "SERVE_MAX_TIMEOUT", d.max_timeout),
            webhook_allow=allow,
            webhook_allow_all=allow_all,
            webhook_timeout=_float(env, "WEBHOOK_TIMEOUT", d.webhook_timeout),
            webhook_max_attempts=_int(env, "WEBHOOK_MAX_ATTEMPTS", d.webhook_max_attempts, 1),
            webhook_backoff=_float(env, "WEBHOOK_BACKOFF", d.webhook_backoff),
            webhook_max_backoff=_float(env, "WEBHOOK_MAX_BACKOFF", d.webhook_max_backoff),
            auth=auth,
            require_key=require_key,
        )


def _networks(env: Mapping[str, str], name: str) -> tuple[tuple[Network, ...], bool]:
    raw = _raw(env, name)
    if raw is None:
        return (), False
    if raw in {"*", "all"}:
        return (), True
    networks: list[Network] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(name, f"{item.strip()!r} is not a network (10.0.0.0/8)") from None
    return tuple(networks), False
