"""Two browser sessions and a CLI submit jobs at the same moment to an app with two workers:
every job is claimed by exactly one worker, once; the jobs share one device, so they run one at
a time; and a page still loads in under a second while they run."""

import sqlite3
import statistics
import subprocess
import sys
import time

import pytest

from tests.conftest import TINY_INSTRUMENT_FLAGS
from tests.ui.conftest import SCREENSHOTS, free_port, start_app, stop_app, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.ui]
LONG = 600_000
CLI_RUN = ["--rounds", "1", "--n-completions", "4", "--max-new-tokens", "12", "--epochs", "1", "--eval-limit", "2",
           "--think-tokens", "1", "--n-contexts", "4", "--probe-tokens", "4", "--tinymfv", "subset",
           *TINY_INSTRUMENT_FLAGS]


def _jobs(db) -> list[dict]:
    with sqlite3.connect(db, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("select * from jobs order by id")]


def test_two_sessions_and_a_cli_submitting_at_once(browser, tmp_path):
    db = tmp_path / "runs.db"
    port = free_port()
    app = start_app(db, port, workers=2, log=tmp_path / "app.log")
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, app)
        pages = []
        for _ in range(2):  # two separate browser sessions (own cookies, own Gradio session)
            page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
            page.goto(url)
            page.get_by_text("Extract vector").wait_for()
            pool = page.locator("#persona-contexts textarea")
            pool.fill("\n".join(pool.input_value().splitlines()[:8]))
            pages.append(page)

        for page in pages:
            page.locator("#extract-btn").click()
        cli = subprocess.run([sys.executable, "-m", "steerheal.cli", "run", "--db", str(db), "--queue", *CLI_RUN],
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0 and "queued" in cli.stdout, cli.stderr[-2000:]

        # While the jobs run, a new visitor's page is served quickly (median of three loads).
        deadline = time.time() + 120
        while not any(j["status"] == "running" for j in _jobs(db)) and time.time() < deadline:
            time.sleep(0.2)
        visitor = browser.new_context()
        loads = []
        for _ in range(3):
            other = visitor.new_page()
            started = time.perf_counter()
            other.goto(url, wait_until="domcontentloaded")
            loads.append(time.perf_counter() - started)
            other.close()
        running_during = [j["kind"] for j in _jobs(db) if j["status"] == "running"]
        visitor.close()

        for page in pages:
            page.locator("#extract-status").get_by_text("The Steer page uses it now").wait_for(timeout=LONG)
        deadline = time.time() + 600
        while time.time() < deadline and any(j["status"] in ("queued", "running") for j in _jobs(db)):
            time.sleep(0.5)
        done = _jobs(db)
    finally:
        stop_app(app)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "page-load-concurrent.txt").write_text(
        "served (DOMContentLoaded) while jobs ran: " + ", ".join(f"{s:.3f} s" for s in loads) + "\n")
    assert running_during, "no job was running while the page loads were measured"
    assert statistics.median(loads) < 1.0, f"page loads while jobs ran: {loads}"
    assert sorted(j["kind"] for j in done) == ["loop", "vector", "vector"]
    assert all(j["status"] == "completed" for j in done), [(j["kind"], j["status"], j["error"]) for j in done]
    assert all(j["attempts"] == 1 and j["worker"] for j in done), "a job was claimed more than once"
    spans = sorted((j["started"], j["finished"]) for j in done)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, "two jobs ran at once on one device"
