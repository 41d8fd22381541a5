"""The engine: composes address checks, MX cache, throttles, probes, verdicts and the store.

- `context`: the process's shared things (settings, store, caches, throttle), made by a face;
- `resolve`: MX resolution through the cache;
- `addresses`: storing addresses and queueing their probes (through a callable);
- `probe`: one address start to finish (resolve, probe, decide, store);
- `bulk`: whole lists with session reuse, catch-all detection and retries.

The faces (CLI, queue jobs, HTTP) call these; nothing else does protocol or
storage work on their behalf, and nothing here imports a face.
"""

from mailprobe.engine.addresses import IngestReport, ingest, queue_worthy, upsert_address
from mailprobe.engine.context import Context
from mailprobe.engine.probe import (
    ResultNotStored,
    probe_email,
    probe_in_slot,
    probe_options,
    probe_queued,
)
from mailprobe.engine.resolve import (
    aget_or_resolve_mx,
    aresolve_domains,
    get_or_resolve_mx,
    stored_domains,
)

__all__ = [
    "Context",
    "IngestReport",
    "ResultNotStored",
    "aget_or_resolve_mx",
    "aresolve_domains",
    "get_or_resolve_mx",
    "ingest",
    "probe_email",
    "probe_in_slot",
    "probe_options",
    "probe_queued",
    "queue_worthy",
    "stored_domains",
    "upsert_address",
]
