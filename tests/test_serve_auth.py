"""API keys (`mailprobe apikey create|list|revoke`, stored hashed), the loopback-only rule
without a key, rate limits; and 100 concurrent single checks with every cap held."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.serve_server import MailWorld, ServeProcess, free_port

pytest.importorskip("fastapi")


def test_keys_are_made_listed_checked_and_revoked(tmp_path: Path) -> None:
    with MailWorld() as world:
        srv = ServeProcess({**world.env(), "SERVE_RATE_LIMIT": "0"}, tmp_path)
        made = srv.cli("apikey", "create", "ci robot")
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert key.startswith("mp_") and "not shown again" in made.stderr
        db = sqlite3.connect(tmp_path / "serve.db")
        stored = db.execute("SELECT key_hash, prefix FROM api_keys").fetchall()
        assert len(stored) == 1 and key not in stored[0][0] and key.startswith(stored[0][1])
        listed = srv.cli("apikey", "list")
        assert (
            "ci robot" in listed.stdout and "active" in listed.stdout and key not in listed.stdout
        )
        with srv, httpx.Client(base_url=srv.url, timeout=30) as c:
            body = {"email": "user.k@ok.example"}
            none = c.post("/v1/verify", json=body)
            assert none.status_code == 401 and "API key" in none.json()["error"]
            assert none.headers["www-authenticate"] == "Bearer"
            wrong = c.post("/v1/verify", json=body, headers={"Authorization": "Bearer mp_nope"})
            assert wrong.status_code == 401 and "unknown or revoked" in wrong.json()["error"]
            ok = c.post("/v1/verify", json=body, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200 and ok.json()["verdict"] == "deliverable"
            assert c.post("/v1/verify", json=body, headers={"X-API-Key": key}).status_code == 200
            reacher = c.post(
                "/v0/check_email", json={"to_email": "user.k@ok.example"},
                headers={"x-reacher-secret": key},
            )  # fmt: skip
            assert reacher.status_code == 200
            assert c.get("/healthz").status_code == 200  # probes of health need no key
            revoked = srv.cli("apikey", "revoke", "ci robot")
            assert revoked.returncode == 0 and "revoked" in revoked.stdout
            after = c.post("/v1/verify", json=body, headers={"Authorization": f"Bearer {key}"})
            assert after.status_code == 401
        again = srv.cli("apikey", "revoke", "ci robot")
        assert again.returncode == 2 and "no single active key" in again.stderr


def test_without_a_key_a_public_host_is_refused_unless_no_auth(tmp_path: Path) -> None:
    srv = ServeProcess({}, tmp_path)
    refused = srv.cli("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2
    assert "no API key exists" in refused.stderr and "--no-auth" in refused.stderr
    assert "Traceback" not in refused.stderr
    busy = ServeProcess({}, tmp_path).start()
    try:
        taken = srv.cli("serve", "--port", str(busy.port))
        assert taken.returncode == 2 and "in use" in taken.stderr
    finally:
        busy.stop()
    bad = ServeProcess({"SERVE_MAX_ROWS": "lots"}, tmp_path).cli("serve", "--port", "1")
    assert bad.returncode == 2 and "SERVE_MAX_ROWS" in bad.stderr


def test_the_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    with (
        MailWorld() as world,
        ServeProcess({**world.env(), "SERVE_RATE_LIMIT": "5"}, tmp_path) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        codes = [c.get("/v1/jobs").status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3
        limited = c.get("/v1/jobs")
        assert int(limited.headers["retry-after"]) >= 1
        assert "SERVE_RATE_LIMIT" in limited.json()["error"]


def test_100_concurrent_single_checks_hold_every_cap(tmp_path: Path) -> None:
    with MailWorld(reply_delay=0.01) as world:
        world.smtp.behavior.expect_max_concurrency = 2
        env = {
            **world.env(),
            "PER_MX_MAX_CONCURRENCY_DEFAULT": "2",
            "GLOBAL_MAX_CONCURRENCY": "2",
            "PER_MX_RPS_DEFAULT": "200",
            "GLOBAL_RPS": "200",
            "THROTTLE_WAIT": "60",
            "SERVE_RATE_LIMIT": "0",
        }
        emails = [f"user.c{i}@ok.example" if i % 2 else f"gone.c{i}@ok.example"
                  for i in range(100)]  # fmt: skip

        async def run(url: str) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as c:
                return await asyncio.gather(
                    *(c.post("/v1/verify", json={"email": e}) for e in emails)
                )

        with ServeProcess(env, tmp_path) as srv:
            answers = asyncio.run(run(srv.url))
        assert [r.status_code for r in answers] == [200] * 100
        got = {r.json()["email"]: r.json()["verdict"] for r in answers}
        assert got == {e: "deliverable" if e.startswith("user") else "undeliverable"
                       for e in emails}  # fmt: skip
        record = world.smtp.record
        assert record.max_open <= 2, record.max_open
        assert record.concurrency_violations == 0
        assert all(world.count(e) == 1 for e in emails)
