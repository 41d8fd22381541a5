"""The engine: composes address checks, MX cache, throttles, probe and store.

`core` holds single-address work (resolve, probe, persist, upsert, ingest);
`bulk` verifies whole lists with session reuse, catch-all detection and
retries. The CLI, queue jobs and any later API call these; nothing else does
protocol or storage work on their behalf.
"""

from mailprobe.engine.core import (
    IngestReport,
    aget_or_resolve_mx,
    aresolve_domains,
    default_mx_cache,
    default_store,
    flush_behavior,
    get_or_resolve_mx,
    ingest,
    load_behavior,
    no_mx_result,
    probe_email,
    probe_many,
    probe_options,
    stored_domains,
    upsert_generated_email,
)

__all__ = [
    "IngestReport",
    "aget_or_resolve_mx",
    "aresolve_domains",
    "default_mx_cache",
    "default_store",
    "flush_behavior",
    "get_or_resolve_mx",
    "ingest",
    "load_behavior",
    "no_mx_result",
    "probe_email",
    "probe_many",
    "probe_options",
    "stored_domains",
    "upsert_generated_email",
]
