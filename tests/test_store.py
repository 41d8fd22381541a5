"""The store: migrations, idempotent upsert with one enqueue, results, ingest, concurrency.

Runs on SQLite always and on a private PostgreSQL server when its binaries exist.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text

from mailprobe import engine, queue
from mailprobe.results import Outcome, answer_for
from mailprobe.store import GeneratedEmail, Store, StoreError, VerificationResult
from mailprobe.store import queries as q
from tests.pg_server import pg_server, pg_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.r15  # the seed's label: pytest -k r15


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sub' / 'mailprobe.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = Store(url)
    s.upgrade()
    return s


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str, str]]:
    calls: list[tuple[int, str, str]] = []

    def fake(*args: Any) -> str:
        calls.append(args)
        return "job"

    monkeypatch.setattr(queue, "enqueue_probe_email", fake)
    return calls


def test_migrations_from_empty(store: Store) -> None:
    insp = inspect(store.engine)
    assert {"generated_emails", "domain_resolutions", "verification_results", "mx_hosts"} <= set(
        insp.get_table_names()
    )
    assert "latest_verification_results" in insp.get_view_names()
    store.ensure_schema()  # idempotent
    from alembic import command

    from mailprobe.store.database import alembic_config

    command.downgrade(alembic_config(store.engine), "base")
    assert "generated_emails" not in inspect(store.engine).get_table_names()
    store.ensure_schema()
    assert "generated_emails" in inspect(store.engine).get_table_names()


def test_upgrade_from_0001_keeps_results(store: Store) -> None:
    """An existing 0001 database gains the catch-all columns, keeps its rows, and its
    latest-result view shows them (PostgreSQL fixes a view's columns when it is made)."""
    from alembic import command

    from mailprobe.store.database import alembic_config

    config = alembic_config(store.engine)
    command.downgrade(config, "0001")
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO verification_results (email, category, verdict, reason, tls, attempts,"
            " transcript, created_at) VALUES ('a@acme.example', 'accept', 'risky', 'accepted',"
            " false, 1, '[]', CURRENT_TIMESTAMP)"
        ))  # fmt: skip
    store.ensure_schema()
    with store.engine.connect() as conn:
        row = conn.execute(text(
            "SELECT email, verdict, verdict_reason, catch_all FROM latest_verification_results"
        )).one()  # fmt: skip
    assert tuple(row) == ("a@acme.example", "risky", None, None)
    command.downgrade(config, "0001")
    columns = {c["name"] for c in inspect(store.engine).get_columns("verification_results")}
    assert "catch_all" not in columns and "verdict_reason" not in columns
    with store.engine.connect() as conn:
        count = conn.execute(text("SELECT COUNT(*) FROM latest_verification_results")).scalar()
    assert count == 1


def test_sqlite_file_created_with_wal(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "x.db"
    s = Store(f"sqlite:///{path}")
    s.ensure_schema()
    assert path.exists()
    with s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_upsert_is_idempotent_and_enqueues_once(
    store: Store, enqueued: list[tuple[int, str, str]]
) -> None:
    first = queue.upsert_generated_email("Jane.Doe@ACME.example", store=store, source="crm")
    again = queue.upsert_generated_email(" Jane.Doe@acme.example ", store=store)
    other = queue.upsert_generated_email("jane.doe@acme.example", store=store)  # case kept
    assert first == again != other
    assert enqueued == [
        (first, "Jane.Doe@acme.example", "acme.example"),
        (other, "jane.doe@acme.example", "acme.example"),
    ]
    with store.session() as session:
        row = session.get(GeneratedEmail, first)
        assert row is not None
        assert (row.status, row.source, row.domain) == ("queued", "crm", "acme.example")
        assert session.scalar(select(func.count()).select_from(GeneratedEmail)) == 2


def test_failed_enqueue_leaves_address_retryable(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*a: Any) -> str:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(queue, "enqueue_probe_email", down)
    with pytest.raises(ConnectionError):
        queue.upsert_generated_email("a@acme.example", store=store)
    calls: list[Any] = []
    monkeypatch.setattr(queue, "enqueue_probe_email", lambda *a: calls.append(a))
    queue.upsert_generated_email("a@acme.example", store=store)
    assert len(calls) == 1


def test_results_are_appended_and_latest_view(store: Store) -> None:
    base = Outcome(
        email="a@acme.example",
        category="temp_fail",
        reason="greylisted",
        stage="rcpt",
        code=451,
        transcript=("S: 451 greylisted",),
    )
    with store.session() as session:
        q.add_answer(session, answer_for(base))
        q.add_answer(
            session,
            answer_for(
                base.with_evidence(category="accept", reason="accepted", code=250), catch_all=False
            ),
        )
        q.add_answer(session, answer_for(base.with_evidence(email="b@acme.example")))
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(VerificationResult)) == 3
        latest = q.latest_result(session, "a@acme.example")
        assert latest is not None and (latest.code, latest.verdict) == (250, "deliverable")
        assert latest.transcript == ["S: 451 greylisted"]
        rows = session.execute(
            text("SELECT email, code FROM latest_verification_results ORDER BY email")
        ).all()
    assert [tuple(r) for r in rows] == [("a@acme.example", 250), ("b@acme.example", 451)]


def test_ingest_reports_bad_lines_and_keeps_good(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "list.txt"
    src.write_text(
        "jane@acme.example\nnot-an-address\n\n# comment\nbob@acme.example\n"
        "evil@acme.example>\rDATA\njane@acme.example\n"
    )
    report = engine.ingest(src, store=store)
    assert (report.added, report.existing) == (2, 1)
    assert [line for line, _, _ in report.bad] == [2, 6]
    csv = tmp_path / "list.csv"
    csv.write_text(
        "name,email,source\nJane Doe,jane@acme.example,crm\nX,bad@,crm\n"
        "Ann Lee,ann@beta.example,web\n"
    )
    report = engine.ingest(csv, store=store)
    assert (report.added, report.existing, [b[0] for b in report.bad]) == (1, 1, [3])
    with store.session() as session:
        ann = session.scalar(
            select(GeneratedEmail).where(GeneratedEmail.email == "ann@beta.example")
        )
        assert ann is not None and (ann.person_name, ann.source) == ("Ann Lee", "web")


def test_bad_database_url_is_clear() -> None:
    with pytest.raises(StoreError, match="DATABASE_URL"):
        Store("nonsense://nowhere")
    with pytest.raises(StoreError, match="not a database URL"):
        Store("::::")


def test_unreachable_postgres_fails_fast() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(StoreError, match="cannot open database"):
            Store(f"postgresql://u:secret@127.0.0.1:{port}/x").check()
    assert time.monotonic() - started < 10


def test_two_processes_write_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    Store(url).upgrade()
    script = textwrap.dedent(f"""
        import sys
        from mailprobe.address import parse_address
        from mailprobe.store import Store
        from mailprobe.results import Outcome, answer_for
        from mailprobe.store import queries as q
        s = Store({url!r})
        who = sys.argv[1]
        for i in range(300):
            with s.session() as session:   # one transaction per address: many lock handoffs
                q.upsert_email(session, parse_address(f"user{{i}}@shared.example"))
                q.upsert_email(session, parse_address(f"{{who}}{{i}}@own.example"))
                q.add_answer(session, answer_for(Outcome(email=f"{{who}}{{i}}@own.example",
                             category="accept", reason="accepted", stage="rcpt")))
        print("done")
    """)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, who],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("a", "b")
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and out.strip() == "done", err
        assert "database is locked" not in err
    with Store(url).session() as session:
        assert session.scalar(select(func.count()).select_from(GeneratedEmail)) == 900
        assert session.scalar(select(func.count()).select_from(VerificationResult)) == 600


def test_enqueue_path_skips_freemail(
    store: Store, enqueued: list[tuple[int, str, str]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    queue.upsert_generated_email("jane@gmail.com", store=store)
    queue.upsert_generated_email("jane@acme.example", store=store)
    assert [e[1] for e in enqueued] == ["jane@acme.example"]
    listing = tmp_path / "l.txt"
    listing.write_text("bob@outlook.com\nbob@acme.example\n")
    report = queue.ingest(listing, store=store, enqueue_probe=True)
    assert (report.enqueued, report.skipped_freemail) == (1, 1)
    monkeypatch.setenv("PROBE_FREEMAIL", "1")
    from mailprobe import config

    config.get_settings.cache_clear()
    queue.upsert_generated_email("jane@gmail.com", store=store)
    assert enqueued[-1][1] == "jane@gmail.com"


def test_schema_head_constant_matches_migrations(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from mailprobe.store.database import SCHEMA_HEAD, alembic_config

    s = Store(f"sqlite:///{tmp_path / 'h.db'}")
    assert ScriptDirectory.from_config(alembic_config(s.engine)).get_current_head() == SCHEMA_HEAD


def test_database_failure_is_a_clear_store_error(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'broken.db'}")
    s.upgrade()
    with s.engine.begin() as conn:
        conn.execute(text("DROP VIEW latest_verification_results"))
        conn.execute(text("DROP TABLE verification_results"))
    with pytest.raises(StoreError, match=r"broken\.db: no such table"), s.session() as session:
        q.add_answer(session, answer_for(Outcome(email="a@b.example", category="accept",
                                                 reason="accepted", stage="rcpt")))  # fmt: skip


def test_cli_probe_keeps_its_answer_when_the_database_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    from mailprobe.testing.smtpd import ACCEPT, MXBehavior, serve_in_thread

    db = tmp_path / "broken.db"
    s = Store(f"sqlite:///{db}")
    s.upgrade()
    with s.engine.begin() as conn:
        conn.execute(text("DROP VIEW latest_verification_results"))
        conn.execute(text("DROP TABLE verification_results"))
    with serve_in_thread(MXBehavior(default_rcpt=ACCEPT)) as server:
        env = {**__import__("os").environ, "DATABASE_URL": f"sqlite:///{db}"}
        done = subprocess.run(
            [sys.executable, "-m", "mailprobe.cli", "probe", "--email", "a@acme.example",
             "--mx-host", "127.0.0.1", "--port", str(server.port)],
            capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Result : accept (code=250" in done.stdout
    assert "was not stored" in done.stderr


def test_ingest_with_dead_redis_says_so_and_loses_nothing(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    listing = tmp_path / "l.txt"
    listing.write_text("a@acme.example\nb@acme.example\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        done = subprocess.run(
            [sys.executable, "-m", "mailprobe.cli", "ingest", str(listing), "--probe"],
            capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert done.returncode == 2
    assert "unavailable" in done.stderr and "run again" in done.stderr
    store = Store(os.environ["DATABASE_URL"])
    with store.session() as session:
        statuses = set(session.scalars(select(GeneratedEmail.status)))
    assert statuses == {"new"}  # stored, and queueable again


def test_bulk_rows_are_the_rows_one_insert_stores(store: Store) -> None:
    """`add_answers` (the driver's executemany, values made by the column types' bind
    processors) stores what `add_answer` (the ORM) stores, on both backends."""
    outcome = Outcome.from_reply(
        "jane@acme.example", stage="rcpt", code=550, message="5.1.1 <jane@acme.example>: no",
        mx_host="mx.acme.example", enhanced_status="5.1.1", tls=True, elapsed_ms=12,
        transcript=("S: 220 mx", "C: RCPT TO:<jane@acme.example>", "S: 550 5.1.1 no"),
    )  # fmt: skip
    answer = answer_for(outcome, catch_all=False, dns_status="ok")
    with store.session() as session:
        one = q.add_answer(session, answer)
        q.add_answers(session, [(answer, None), (answer, None)])
    with store.session() as session:
        rows = session.scalars(select(VerificationResult).order_by(VerificationResult.id)).all()
        assert len(rows) == 3 and rows[0].id == one

        def columns(r: VerificationResult) -> dict[str, Any]:
            skip = {"id", "created_at"}
            return {c.key: getattr(r, c.key) for c in r.__table__.columns if c.key not in skip}

        assert columns(rows[1]) == columns(rows[0]) == columns(rows[2])
        assert rows[0].transcript == list(outcome.transcript) and rows[1].tls is True
        assert all(isinstance(r.created_at, datetime) for r in rows)
        bulk, one_row = q.answer_from_row(rows[1]), q.answer_from_row(rows[0])
        assert replace(bulk, stored_at=None) == replace(one_row, stored_at=None)
