"""`mailprobe verify --metrics-port`: the same Prometheus metrics as `serve`, from a CLI run."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mailprobe import config
from mailprobe.cli import main
from tests.serve_server import MailWorld, free_port

pytest.importorskip("prometheus_client")


def test_verify_exposes_its_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with MailWorld() as world:
        for name, value in world.env().items():
            monkeypatch.setenv(name, value)
        config.get_settings.cache_clear()
        listing = tmp_path / "list.txt"
        listing.write_text("user.v1@ok.example\nnobody.v1@ok.example\nuser.v2@ok.example\n")
        port = free_port()
        assert main(["verify", str(listing), "-q", "--metrics-port", str(port)]) == 0
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    def sample(line_start: str) -> float:
        return next(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line_start))

    assert sample('mailprobe_probes_total{reason="accepted",verdict="deliverable"}') >= 2
    assert sample('mailprobe_probes_total{reason="mailbox_not_found",verdict="undeliverable"}') >= 1
    assert sample('mailprobe_session_seconds_count{mx_class="default"}') >= 1
    assert 'mailprobe_sessions_open{mx_class="default"} 0.0' in text
    assert main(["verify", str(listing), "-q", "--metrics-port", str(port)]) == 2
    assert "--metrics-port" in capsys.readouterr().err
