"""API keys: made at random, shown once, stored as their SHA-256 (`mailprobe apikey ...`).

A key is 256 random bits, so a fast hash is enough: there is nothing to guess by
brute force, unlike a password, and checking one costs a single indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from mailprobe.store import Store
from mailprobe.store.models import ApiKey, utcnow

KEY_PREFIX = "mp_"
LAST_USED_EVERY = 60.0  # seconds between writes of a key's last use


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def create_key(store: Store, name: str) -> tuple[KeyInfo, str]:
    """A new key: its row, and the key itself (the only time it is seen)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=key[: len(KEY_PREFIX) + 6], key_hash=hash_key(key))
    with store.session() as session:
        session.add(row)
        session.flush()
        info = _info(row)
    return info, key


def list_keys(store: Store) -> list[KeyInfo]:
    with store.session() as session:
        return [_info(r) for r in session.scalars(select(ApiKey).order_by(ApiKey.id))]


def revoke_key(store: Store, ref: str) -> KeyInfo | None:
    """Revoke the key with this id, or the one key with this name or prefix."""
    with store.session() as session:
        rows = list(session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))))
        matches = [r for r in rows if str(r.id) == ref or r.name == ref or r.prefix == ref]
        if len(matches) != 1:
            return None
        matches[0].revoked_at = utcnow()
        return _info(matches[0])


def active_keys(store: Store) -> int:
    with store.session() as session:
        count = session.scalar(
            select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
        )
        return int(count or 0)


def check_key(store: Store, key: str) -> int | None:
    """The id of the live key `key` is, or None."""
    with store.session() as session:
        row = session.scalar(
            select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        )
        if row is None:
            return None
        now = utcnow()
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > LAST_USED_EVERY:
            # At most one write a minute per key: a burst of requests is not a burst of writes.
            session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        return row.id


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, row.prefix, row.created_at, row.last_used_at, row.revoked_at)
