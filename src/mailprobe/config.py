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
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

from mailprobe.address import InvalidAddress, check_hostname, parse_address

DEFAULT_HELO_DOMAIN = "verifier.crestwellpartners.com"


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
    smtp_tls_verify: bool = False  # SMTP_TLS_VERIFY, check the MX certificate
    smtp_tls_cafile: str | None = None  # SMTP_TLS_CAFILE, extra CA bundle

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
        return cls(
            smtp_helo_domain=helo,
            smtp_mail_from=_mail_from(env, "SMTP_MAIL_FROM", f"bounce@{helo}"),
            smtp_connect_timeout=connect,
            smtp_command_timeout=command,
            smtp_port=_port(env, "SMTP_PORT", 25),
            smtp_probe_deadline=deadline,
            smtp_source_address=_ip_or_none(env, "SMTP_SOURCE_ADDRESS"),
            smtp_starttls=_bool(env, "SMTP_STARTTLS", True),
            smtp_tls_verify=_bool(env, "SMTP_TLS_VERIFY", False),
            smtp_tls_cafile=_existing_file_or_none(env, "SMTP_TLS_CAFILE"),
        )

    def as_env(self) -> dict[str, str]:
        """The settings under their environment names (for display and child processes)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name.upper()] = str(int(value)) if isinstance(value, bool) else str(value)
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
        raise ConfigError(name, f"{raw!r} must be a positive, finite number of seconds")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not a whole number") from None
    if not 1 <= value <= 65535:
        raise ConfigError(name, f"{value} is not a TCP port (1-65535)")
    return value


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


def _ip_or_none(env: Mapping[str, str], name: str) -> str | None:
    raw = _raw(env, name)
    if raw is None:
        return None
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not an IP address") from None


def _existing_file_or_none(env: Mapping[str, str], name: str) -> str | None:
    raw = _raw(env, name)
    if raw is None:
        return None
    if not os.path.isfile(raw):
        raise ConfigError(name, f"{raw!r} is not a readable file")
    return raw
