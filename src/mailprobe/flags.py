"""Flags on an address: free (consumer mailbox), disposable, role. Facts, not verdicts.

A flag never changes what the server said; it tells the user what kind of
address it is. Free and role lists ship in mailprobe/data; disposable domains
come from the `disposable-email-domains` package.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

from disposable_email_domains import blocklist as _disposable


@cache
def _list(name: str) -> frozenset[str]:
    text = resources.files("mailprobe.data").joinpath(name).read_text(encoding="utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


def _in(domain: str, names: frozenset[str] | set[str]) -> bool:
    """Exact match or a parent domain listed (mail.gmx.net matches gmx.net)."""
    parts = domain.lower().rstrip(".").split(".")
    return any(".".join(parts[i:]) in names for i in range(len(parts) - 1))


def is_freemail(domain: str) -> bool:
    return _in(domain, _list("freemail.txt"))


def is_disposable(domain: str) -> bool:
    return _in(domain, _disposable)


def is_role(local_part: str) -> bool:
    base = local_part.lower().split("+", 1)[0]
    return base in _list("role_accounts.txt")


@dataclass(frozen=True, slots=True)
class Flags:
    free: bool = False
    disposable: bool = False
    role: bool = False

    def as_dict(self) -> dict[str, bool]:
        return {"free": self.free, "disposable": self.disposable, "role": self.role}


def flags_for(local_part: str, domain: str) -> Flags:
    free, disposable = _domain_flags(domain)
    return Flags(free, disposable, is_role(local_part))


@lru_cache(maxsize=65536)
def _domain_flags(domain: str) -> tuple[bool, bool]:
    """A list's addresses share few domains: each is looked up once."""
    return is_freemail(domain), is_disposable(domain)


def flags_for_email(email: str) -> Flags | None:
    """Flags of a stored (normalised) address; None for a string that is no address."""
    local, at, domain = email.rpartition("@")
    if not at or not local:
        return None
    with contextlib.suppress(UnicodeError):
        domain = domain.encode("idna").decode("ascii")
    return flags_for(local, domain.lower())
