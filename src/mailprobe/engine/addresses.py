"""Storing addresses: one (`upsert_address`) or a whole list (`ingest`), queued once each.

Enqueueing is a callable the face passes in (`mailprobe.queue.enqueue_probe_email`
for the seed's path): the engine never imports the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from mailprobe.address import EmailAddress, parse_address
from mailprobe.config import get_settings
from mailprobe.flags import is_freemail
from mailprobe.inputs import read_addresses
from mailprobe.store import Store, open_store
from mailprobe.store import queries as q

# (email_id, normalised email, ASCII domain) -> a job id; raises when it cannot queue.
Enqueue = Callable[[int, str, str], object]


def upsert_address(
    email: str,
    *,
    person_name: str | None = None,
    source: str | None = None,
    enqueue: Enqueue | None = None,
    store: Store | None = None,
) -> int:
    """Insert (or find) the normalised address and return its id; enqueue its probe once.

    Idempotent: an address upserted twice is stored once and enqueued once,
    because only the call that moves it from "new" to "queued" enqueues.
    """
    address = parse_address(email)
    store = store or open_store(get_settings().database_url)
    with store.session() as session:
        email_id, _created = q.upsert_email(
            session, address, person_name=person_name, source=source
        )
        claimed = (
            enqueue is not None and queue_worthy(address) and q.claim_for_probe(session, email_id)
        )
    if claimed and enqueue is not None:
        try:
            enqueue(email_id, address.normalized, address.ascii_domain)
        except Exception:
            with store.session() as session:  # let a later upsert enqueue it again
                q.set_status(session, [email_id], "new")
            raise
    return email_id


def queue_worthy(address: EmailAddress) -> bool:
    """The enqueue path skips freemail domains (as the seed does): probing gmail.com
    & co. in bulk is rarely useful and wears out our welcome. PROBE_FREEMAIL=1 lifts
    this; an explicit `mailprobe probe` always runs."""
    return get_settings().probe_freemail or not is_freemail(address.ascii_domain)


@dataclass
class IngestReport:
    added: int = 0
    existing: int = 0
    enqueued: int = 0
    skipped_freemail: int = 0
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (line, raw, why)


def ingest(
    source: str | Path | TextIO,
    *,
    store: Store | None = None,
    enqueue: Enqueue | None = None,
    source_name: str | None = None,
    column: str | None = None,
) -> IngestReport:
    """Store every good address of a list; report bad lines by number, keep the good ones.
    With `enqueue`, queue each address's probe once (freemail skipped, see queue_worthy)."""
    store = store or open_store(get_settings().database_url)
    report = IngestReport()
    to_enqueue: list[tuple[int, str, str]] = []
    with store.session() as session:
        for line in read_addresses(source, column=column):
            if not line.raw.strip() or line.raw.lstrip().startswith("#"):
                continue
            if line.address is None:
                report.bad.append((line.line_no, line.raw, line.error or "invalid"))
                continue
            extra = {k.lower(): v for k, v in line.extra.items()}  # headers come as given
            email_id, created = q.upsert_email(
                session,
                line.address,
                person_name=extra.get("name") or extra.get("person_name"),
                source=extra.get("source") or source_name,
            )
            report.added += created
            report.existing += not created
            if enqueue is not None and not queue_worthy(line.address):
                report.skipped_freemail += 1
            elif enqueue is not None and q.claim_for_probe(session, email_id):
                to_enqueue.append((email_id, line.address.normalized, line.address.ascii_domain))
    for i, (email_id, email, domain) in enumerate(to_enqueue):
        assert enqueue is not None
        try:
            enqueue(email_id, email, domain)
        except Exception:
            # Not queued after all: back to "new", so the next ingest or upsert queues them.
            with store.session() as session:
                q.set_status(session, [e[0] for e in to_enqueue[i:]], "new")
            raise
        report.enqueued += 1
    return report
