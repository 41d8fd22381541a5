"""Drawing a world at random (from its seed): domain kinds in proportion, plausible
local parts, and input lines that are not addresses."""

from __future__ import annotations

import random
from collections.abc import Mapping

from mailprobe.testing.worldconfig import Kind

_DOMAIN_WORDS = (
    "acme", "globex", "initech", "umbrella", "hooli", "vandelay", "wayne", "stark",
    "tyrell", "cyberdyne", "soylent", "wonka", "monarch", "oscorp", "nakatomi",
    "prestige", "sterling", "dunder", "gekko", "massive", "pied-piper", "aperture",
)  # fmt: skip
_FIRST = (
    "jane", "john", "maria", "li", "ahmed", "olga", "pierre", "yuki", "sam", "ana",
    "noah", "emma", "lucas", "mia", "omar", "zoe", "ivan", "chloe", "ravi", "ines",
)  # fmt: skip
_LAST = (
    "smith", "garcia", "chen", "mueller", "rossi", "kowalski", "silva", "tanaka",
    "novak", "dubois", "kim", "jones", "haddad", "larsen", "okafor", "petrov",
)  # fmt: skip
_ROLES = ("info", "sales", "support", "billing", "admin", "contact", "hr", "office")


def domain_name(rng: random.Random, i: int) -> str:
    """The i-th domain's name, e.g. "acme-17.example"."""
    return f"{rng.choice(_DOMAIN_WORDS)}-{i}.example"


def apportion(weights: Mapping[str, float], n: int) -> list[Kind]:
    """n kinds in proportion to `weights` (largest remainder); each weighted kind at
    least once when n allows."""
    kinds = [(Kind(k), float(w)) for k, w in weights.items() if w > 0]
    if n <= 0 or not kinds:
        return []
    total = sum(w for _, w in kinds)
    exact = {k: w / total * n for k, w in kinds}
    counts = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    if n >= len(kinds):
        for k in counts:
            if counts[k] == 0:
                donor = max(counts, key=lambda d: counts[d])
                counts[donor] -= 1
                counts[k] = 1
    return [k for k, _ in kinds for _ in range(counts[k])]


def local_part(rng: random.Random, used: set[str]) -> str:
    while True:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        form = rng.randrange(6)
        if form == 0:
            local = f"{first}.{last}"
        elif form == 1:
            local = f"{first[0]}{last}"
        elif form == 2:
            local = f"{first}{last[0]}"
        elif form == 3:
            local = f"{first}.{last}{rng.randrange(1, 100)}"
        elif form == 4:
            local = f"{first}_{last}"
        else:
            local = rng.choice(_ROLES)
        if local in used:
            local = f"{local}{rng.randrange(100, 10000)}"
        if local not in used:
            used.add(local)
            return local


# First names with non-ASCII letters, for SMTPUTF8 local parts (RFC 6531).
_UNICODE_FIRST = ("jöe", "zoë", "andré", "françois", "josé", "søren", "łukasz", "añeta")


def intl_local_part(rng: random.Random, used: set[str], j: int) -> str:
    """The j-th local part of an INTL domain, cycling through the RFC 5321 / 6531 forms
    real lists hold: a quoted string that needs no quotes ("d.wood", sent as d.wood),
    one that does ("jane smith"), a non-ASCII local part, and a plus tag."""
    while True:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        core = {
            0: f"{first}.{last}",
            1: f"{first} {last}",
            2: f"{rng.choice(_UNICODE_FIRST)}.{last}",
            3: f"{first}+{rng.choice(('news', 'crm', 'list'))}",
        }[j % 4]
        if core in used:
            core = f"{core}{rng.randrange(100, 10000)}"
        if core not in used:
            used.add(core)
            return f'"{core}"' if j % 4 in (0, 1) else core


def invalid_line(rng: random.Random, email: str) -> str:
    """A line that is not an address (mailprobe.address.parse_address refuses it)."""
    local, _, domain = email.partition("@")
    return rng.choice(
        (
            f"{local}@@{domain}",
            f"{local}.{domain}",
            f"{local}@",
            f"@{domain}",
            f"{local} {local}@{domain}",
            f"{local}..x@{domain}",
            f"{local}@{domain}@{domain}",
        )
    )
