"""The web page at `/`, driven in Debian's headless chromium by Playwright: paste a list,
watch the job finish, see its counts, download its results; check one address and see
its transcript; find the job in the list. Skipped when /usr/bin/chromium is absent
(scripts/setup.sh installs it); Playwright's own browser download is never used."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve_server import MailWorld, ServeProcess

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"no browser: {CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("fastapi")

ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SCREENSHOT = (
    Path(os.environ.get("MAILPROBE_SCREENSHOT", ""))
    if os.environ.get("MAILPROBE_SCREENSHOT")
    else None
)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[tuple[Any, ServeProcess]]:
    with (
        MailWorld() as world,
        ServeProcess(world.env(), tmp_path) as srv,
        sync_api.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(
                accept_downloads=True, viewport={"width": 1100, "height": 800}
            )
            yield context.new_page(), srv
        finally:
            browser.close()


def test_a_pasted_list_becomes_a_job_watched_to_its_end(
    page: tuple[Any, ServeProcess], tmp_path: Path
) -> None:
    tab, srv = page
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(srv.url + "/")
    tab.fill(
        "#job-paste",
        "user.p1@ok.example\nnobody.p1@ok.example\nfull.p1@ok.example\n"
        "x@all.example\nnot an address\n",
    )
    tab.click("#job-form button[type=submit]")
    tab.wait_for_function("document.body.dataset.jobStatus === 'done'", timeout=30_000)
    assert tab.inner_text("#job-progress") == "5 of 5 answered"
    counts = tab.inner_text("#job-counts")
    assert "1 deliverable" in counts and "2 undeliverable" in counts and "2 risky" in counts
    with tab.expect_download() as download:
        tab.click("#job-view button[data-format=csv][data-verdict='']")
    saved = tmp_path / "results.csv"
    download.value.save_as(saved)
    text = saved.read_text()
    assert text.splitlines()[0].startswith("line,email,verdict") and "user.p1@ok.example" in text
    if SCREENSHOT is not None:
        tab.wait_for_timeout(600)  # the progress bar's transition ends
        tab.screenshot(path=str(SCREENSHOT), full_page=True)
    tab.click("text=back")
    tab.wait_for_selector("#jobs a")
    assert "pasted list" in tab.inner_text("#jobs")
    assert errors == []


def test_one_address_is_checked_with_its_transcript(page: tuple[Any, ServeProcess]) -> None:
    tab, srv = page
    tab.goto(srv.url + "/")
    tab.fill("#one-email", "nobody.p2@ok.example")
    tab.click("#one-form button[type=submit]")
    tab.wait_for_selector("#one-result pre")
    assert "undeliverable" in tab.inner_text("#one-result")
    assert "RCPT TO:<nobody.p2@ok.example>" in tab.inner_text("#one-result pre")
    tab.fill("#one-email", "")
    tab.fill("#one-email", "bad address")
    tab.click("#one-form button[type=submit]")
    tab.wait_for_function(
        "document.querySelector('#one-result').innerText.includes('invalid_syntax')"
    )
