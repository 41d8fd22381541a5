"""`mailprobe serve` through HTTP: a real server (subprocess, uvicorn on a loopback port), the
mail world on loopback, an HTTP client. Each endpoint, a table of bad inputs (never a 500)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve_server import MailWorld, ServeProcess, job_done

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def world() -> Iterator[MailWorld]:
    with MailWorld() as w:
        yield w


@pytest.fixture(scope="module")
def server(world: MailWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    env = {**world.env(), "SERVE_MAX_ROWS": "50", "SERVE_MAX_BODY_BYTES": "20000"}
    with ServeProcess(env, tmp_path_factory.mktemp("serve-api")) as srv:
        yield srv


@pytest.fixture
def client(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.mark.parametrize(
    ("email", "verdict", "reason"),
    [
        ("user.a@ok.example", "deliverable", "accepted"),
        ("nobody.a@ok.example", "undeliverable", "mailbox_not_found"),
        ("full.a@ok.example", "risky", "mailbox_full"),
        ("off.a@ok.example", "undeliverable", "mailbox_disabled"),
        ("anyone@all.example", "risky", "catch_all"),
        ("x@blocked.example", "unknown", "policy_block"),
        ("x@gone.example", "undeliverable", "no_such_domain"),
        ("x@nomail.example", "undeliverable", "null_mx"),
        ("not an address", "undeliverable", "invalid_syntax"),
    ],
)
def test_one_address_gets_its_record(
    client: httpx.Client, email: str, verdict: str, reason: str
) -> None:
    r = client.post("/v1/verify", json={"email": email})
    assert r.status_code == 200, r.text
    record = r.json()
    assert (record["verdict"], record["reason"]) == (verdict, reason)
    assert record["email"] == email
    for key in ("catch_all", "flags", "mx_host", "code", "enhanced_status", "message",
                "attempts", "elapsed_ms", "stage"):  # fmt: skip
        assert key in record
    assert "transcript" not in record


def test_the_transcript_comes_on_request(client: httpx.Client) -> None:
    record = client.post(
        "/v1/verify", json={"email": "user.t@ok.example", "transcript": True}
    ).json()
    text = "\n".join(record["transcript"])
    assert "RCPT TO:<user.t@ok.example>" in text and "EHLO" in text
    assert record["code"] == 250 and record["enhanced_status"] == "2.1.5"


def test_reacher_check_email_has_reachers_shape(client: httpx.Client) -> None:
    r = client.post("/v0/check_email", json={"to_email": "nobody.r@ok.example"})
    assert r.status_code == 200, r.text
    body = r.json()
    # Required keys of Reacher's CheckEmailOutput (backend/openapi.json).
    assert {"input", "is_reachable", "misc", "mx", "smtp", "syntax"} <= set(body)
    assert body["input"] == "nobody.r@ok.example"
    assert body["is_reachable"] == "invalid"
    assert body["mx"] == {"accepts_mail": True, "records": ["mx.sim.example."]}
    assert body["smtp"] == {
        "can_connect_smtp": True, "has_full_inbox": False, "is_catch_all": False,
        "is_deliverable": False, "is_disabled": False,
    }  # fmt: skip
    assert body["syntax"]["username"] == "nobody.r" and body["syntax"]["domain"] == "ok.example"
    safe = client.post("/v0/check_email", json={"to_email": "user.r@ok.example"}).json()
    assert safe["is_reachable"] == "safe" and safe["smtp"]["is_deliverable"] is True


def test_a_reacher_client_is_told_plainly_what_we_do_not_do(client: httpx.Client) -> None:
    r = client.post(
        "/v0/check_email", json={"to_email": "a@ok.example", "proxy": {"host": "p", "port": 1080}}
    )
    assert r.status_code == 422 and "proxy" in r.json()["error"]
    r = client.post("/v0/check_email", json={"to_email": ""})
    assert r.status_code == 400 and r.json() == {"error": "to_email field is required."}


BAD = [
    # (method, path, kwargs, status, words in the error)
    (
        "POST",
        "/v1/verify",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        400,
        "JSON",
    ),
    ("POST", "/v1/verify", {"json": {}}, 422, "email"),
    ("POST", "/v1/verify", {"json": {"email": ""}}, 422, "email"),
    ("POST", "/v1/verify", {"json": {"email": "a@ok.example", "timeout": -1}}, 422, "timeout"),
    ("POST", "/v1/verify", {"json": {"email": "a@ok.example", "timeout": 9999}}, 422, "timeout"),
    ("POST", "/v1/verify", {"json": {"email": "a@ok.example", "colour": 1}}, 422, "colour"),
    ("POST", "/v1/verify", {"json": ["a@ok.example"]}, 422, "body"),
    ("POST", "/v1/verify", {"json": {"email": "a" * 2000}}, 422, "email"),
    ("POST", "/v1/jobs", {"json": {"emails": []}}, 400, "empty"),
    ("POST", "/v1/jobs", {"json": {"emails": "a@ok.example"}}, 422, "emails"),
    ("POST", "/v1/jobs", {"json": {"emails": [{"name": "x"}]}}, 422, '"email"'),
    (
        "POST",
        "/v1/jobs",
        {"json": {"emails": [f"u{i}@ok.example" for i in range(51)]}},
        413,
        "SERVE_MAX_ROWS",
    ),
    (
        "POST",
        "/v1/jobs",
        {"content": b"{", "headers": {"content-type": "application/json"}},
        400,
        "JSON",
    ),
    (
        "POST",
        "/v1/jobs",
        {"content": b"name,phone\nAnn,123\n", "headers": {"content-type": "text/csv"}},
        400,
        "no address column",
    ),
    ("POST", "/v1/jobs", {"content": b"", "headers": {"content-type": "text/csv"}}, 400, "empty"),
    (
        "POST",
        "/v1/jobs",
        {"content": b"\x00\x01\x02binary\x00" * 10, "headers": {"content-type": "text/csv"}},
        400,
        "",
    ),
    (
        "POST",
        "/v1/jobs",
        {"content": b"x" * 30000, "headers": {"content-type": "text/csv"}},
        413,
        "SERVE_MAX_BODY_BYTES",
    ),
    (
        "POST",
        "/v1/jobs",
        {"content": b"email\n" + b"u@ok.example\n" * 60, "headers": {"content-type": "text/csv"}},
        413,
        "SERVE_MAX_ROWS",
    ),
    (
        "POST",
        "/v1/jobs",
        {"content": b"<x/>", "headers": {"content-type": "application/xml"}},
        415,
        "Content-Type",
    ),
    ("POST", "/v1/jobs", {"files": {"other": ("a.csv", b"email\na@ok.example\n")}}, 400, '"file"'),
    (
        "POST",
        "/v1/jobs?column=nope",
        {"content": b"email\na@ok.example\n", "headers": {"content-type": "text/csv"}},
        400,
        "no such column",
    ),
    (
        "POST",
        "/v1/jobs",
        {"json": {"emails": ["a@ok.example"], "webhook": {"url": "http://127.0.0.1:9/h"}}},
        400,
        "private or loopback",
    ),
    (
        "POST",
        "/v1/jobs",
        {"json": {"emails": ["a@ok.example"], "webhook": {"url": "ftp://example.com/"}}},
        400,
        "http",
    ),
    (
        "POST",
        "/v1/jobs",
        {"json": {"emails": ["a@ok.example"], "webhook": {"url": "http://10.1.2.3/"}}},
        400,
        "private",
    ),
    ("GET", "/v1/jobs/nope", {}, 404, "no job"),
    ("GET", "/v1/jobs/nope/results", {}, 404, "no job"),
    ("GET", "/v1/jobs/nope/results?format=xml", {}, 400, "csv or jsonl"),
    ("GET", "/v1/jobs/nope/results?verdict=great", {}, 400, "verdict"),
    ("DELETE", "/v1/jobs/nope", {}, 404, "no job"),
    ("GET", "/v1/nothing-here", {}, 404, ""),
    ("PUT", "/v1/verify", {"json": {"email": "a@ok.example"}}, 405, ""),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "words"), BAD)
def test_bad_input_gets_a_clear_4xx_never_a_500(
    client: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int, words: str
) -> None:
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error and "Traceback" not in error
    assert words in error


def test_a_json_job_probes_each_address_once_and_streams_results(
    client: httpx.Client, world: MailWorld
) -> None:
    emails = ["user.j1@ok.example", "nobody.j1@ok.example", "user.j1@OK.Example",
              "user.j1@ok.example", "bad line", "x@gone.example"]  # fmt: skip
    r = client.post("/v1/jobs", json={"emails": emails, "name": "json list"})
    assert r.status_code == 201, r.text
    job = job_done(client, r.json()["id"])
    assert job["status"] == "done" and job["total"] == 6 and job["done"] == 6
    assert job["counts"] == {"deliverable": 3, "undeliverable": 3, "risky": 0, "unknown": 0}
    assert world.count("user.j1@ok.example") == 1  # three lines, one RCPT
    lines = client.get(f"/v1/jobs/{job['id']}/results?format=jsonl").text.splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["email"] for r in records] == emails
    assert records[2]["duplicate_of"] == 1 and records[2]["verdict"] == "deliverable"
    kept = client.get(f"/v1/jobs/{job['id']}/results?format=jsonl&verdict=undeliverable").text
    assert [json.loads(x)["line"] for x in kept.splitlines()] == [2, 5, 6]
    listed = client.get("/v1/jobs").json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]


def test_a_csv_upload_keeps_its_columns(client: httpx.Client) -> None:
    upload = "Name;E-Mail;Source\nAnn;user.c1@ok.example;fair\nBob;nobody.c1@ok.example;web\n"
    r = client.post(
        "/v1/jobs?name=leads.csv",
        content=upload.encode(),
        headers={"content-type": "text/csv"},
    )
    assert r.status_code == 201, r.text
    job = job_done(client, r.json()["id"])
    assert job["name"] == "leads.csv"
    text = client.get(f"/v1/jobs/{job['id']}/results?format=csv").text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0])[:3] == ["Name", "E-Mail", "Source"]
    assert [(r["Name"], r["E-Mail"], r["Source"], r["verdict"]) for r in rows] == [
        ("Ann", "user.c1@ok.example", "fair", "deliverable"),
        ("Bob", "nobody.c1@ok.example", "web", "undeliverable"),
    ]
    only = client.get(f"/v1/jobs/{job['id']}/results?format=csv&verdict=deliverable").text
    assert len(list(csv.DictReader(io.StringIO(only)))) == 1


def test_a_multipart_upload_is_a_job_too(client: httpx.Client) -> None:
    r = client.post(
        "/v1/jobs",
        files={"file": ("list.txt", b"user.m1@ok.example\nnobody.m1@ok.example\n")},
        data={"force": "true"},
    )
    assert r.status_code == 201, r.text
    job = job_done(client, r.json()["id"])
    assert job["name"] == "list.txt" and job["done"] == 2


def test_results_are_there_while_the_job_runs_and_a_cancel_stops_it(tmp_path: Path) -> None:
    with MailWorld(reply_delay=0.1) as slow:
        env = {**slow.env(), "SMTP_PIPELINING": "0", "PER_MX_MAX_CONCURRENCY_DEFAULT": "1"}
        srv = ServeProcess(env, tmp_path).start()
        c = httpx.Client(base_url=srv.url, timeout=30)
        emails = [f"user.s{i}@ok.example" for i in range(60)]
        job_id = c.post("/v1/jobs", json={"emails": emails}).json()["id"]

        def some_done() -> bool:
            return bool(c.get(f"/v1/jobs/{job_id}").json()["done"] >= 3)

        from tests.serve_server import wait_for

        wait_for(some_done, 30)
        partial = c.get(f"/v1/jobs/{job_id}/results?format=jsonl")
        assert partial.headers["x-job-status"] == "running"
        got = len(partial.text.splitlines())
        assert 3 <= got < 60
        shown = c.get(f"/v1/jobs/{job_id}").json()
        assert shown["rate"] is not None and shown["eta_seconds"] is not None
        r = c.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        done = c.get(f"/v1/jobs/{job_id}").json()["done"]
        assert done < 60
        assert c.delete(f"/v1/jobs/{job_id}").status_code == 409
        srv.stop()


def test_health_readiness_metrics_and_openapi(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    client.post("/v1/verify", json={"email": "user.metrics@ok.example"})
    text = client.get("/metrics").text
    names = (
        "mailprobe_probes_total", "mailprobe_rcpt_seconds_bucket",
        "mailprobe_session_seconds_bucket", "mailprobe_sessions_open", "mailprobe_jobs",
        "mailprobe_http_requests_total", "mailprobe_throttle_penalties_total",
        "mailprobe_webhook_deliveries_total",
    )  # fmt: skip
    for name in names:
        assert name in text, name
    assert 'mailprobe_probes_total{reason="accepted",verdict="deliverable"}' in text
    spec = client.get("/openapi.json").json()
    assert {"/v1/verify", "/v0/check_email", "/v1/jobs", "/v1/jobs/{job_id}/results"} <= set(
        spec["paths"]
    )
    assert client.get("/docs").status_code == 200
