"""Persistence: addresses, domain resolutions, per-MX behaviour and verification results."""

from mailprobe.store.database import Store, StoreError, open_store
from mailprobe.store.models import (
    DomainResolution,
    GeneratedEmail,
    MXHost,
    VerificationResult,
)

__all__ = [
    "DomainResolution",
    "GeneratedEmail",
    "MXHost",
    "Store",
    "StoreError",
    "VerificationResult",
    "open_store",
]
