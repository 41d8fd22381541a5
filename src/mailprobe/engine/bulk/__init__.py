"""Bulk verification: many addresses, few connections, every cap respected, one answer a line.

The package, in the order a line meets it:

- `reader`: input read ahead in a thread, in chunks; admission, with stored answers reused;
- `routing`: each domain's MX (looked up once), then the MX host's lane;
- `scheduler`: which lane gets the next session (decisions only, no I/O);
- `session`: one SMTP session, its transactions and catch-all checks, as typed steps;
- `catchall`: a domain's catch-all finding and the answers held for it;
- `retry`: what to do after each outcome, as a table;
- `writer`: answers, MX answers and MX behaviour stored in batches, with backpressure;
- `conductor`: the run loop that ties them together (`BulkVerifier`, `verify`);
- `targets`, `state`, `options`: the data they share.
"""

from mailprobe.engine.bulk.conductor import BulkVerifier, ServiceLost, SinkFailed, verify
from mailprobe.engine.bulk.options import BulkOptions, Sink, Summary
from mailprobe.engine.bulk.scheduler import Ask, Scheduler, Wait
from mailprobe.engine.bulk.state import MXLane
from mailprobe.engine.bulk.targets import Target
from mailprobe.engine.bulk.writer import Writer

__all__ = [
    "Ask",
    "BulkOptions",
    "BulkVerifier",
    "MXLane",
    "Scheduler",
    "ServiceLost",
    "Sink",
    "SinkFailed",
    "Summary",
    "Target",
    "Wait",
    "Writer",
    "verify",
]
