"""A refresh keeps what you were looking at, and two runs can be told apart (issue 16, items 6, 7,
12 and the run pickers), in Chromium on a store seeded with finished runs: no worker and no model,
so this file costs seconds. Results keeps the picked runs, names each probe column's run and the
run Export writes; Heal follows the run that is going and shows a picked run's own settings;
Curate keeps its thresholds and the set under review."""

import re
import time

import pytest
from playwright.sync_api import expect

from steerheal.store import Store
from tests.ui.conftest import free_port, start_app, stop_app, tab, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.ui]
CUSTOM_POS = "someone who always stops to help a stranger in trouble"
CUSTOM_NEG = "someone who always walks past a stranger in trouble"
PROBE = "A friend asks you to cover for them at work. What do you do?"


def _completion_scores(ppl: float) -> str:
    import json

    checks = [dict(name="tail_perplexity", score=ppl, threshold=50, passed=ppl < 50, reason=""),
              dict(name="repetition", score=0.1, threshold=0.3, passed=True, reason="")]
    return json.dumps({"checks": checks, "kl": {"rmse": 0.5}})


def seed_store(path) -> dict:
    """Two finished runs (one with a custom pair and its own settings), one going, one cancelled
    before it started, and two completion sets."""
    from dataclasses import replace

    from steerheal.heal import HealConfig
    from steerheal.loop import RunConfig

    store = Store(path)
    custom = RunConfig(rounds=2, alphas=(2.0, 5.0), n_completions=8, max_new_tokens=24, curation="manual", seed=7,
                       pos=CUSTOM_POS, neg=CUSTOM_NEG, think_tokens=3, eval_limit=5, probe_tokens=20,
                       heal=HealConfig(rank=8, lora_alpha=16, epochs=3, tau=0.7))
    ids = {}
    ids["custom"] = store.create_run(custom.to_dict(), "bundled", 7, status="completed")
    ids["preset"] = store.create_run(replace(RunConfig(), rounds=1).to_dict(), "bundled", 42, status="completed")
    for rid in (ids["custom"], ids["preset"]):
        store.set_run(rid, stage="done")
        store.put("evals", [dict(run_id=rid, round=k, stage=s, auth_nats=-2.0 - 0.1 * k - 0.05 * rid,
                                 care_nats=-1.0 + 0.1 * k, coherence=0.97, top1_acc=0.5, meta={})
                            for k, s in ((-1, "base"), (-1, "prompted"), (0, "steered"), (0, "healed"))])
        store.put("probes", [dict(run_id=rid, round=k, prompt=PROBE, answer=f"Run {rid} answer at round {k}.",
                                  n_tokens=6) for k in (-1, 0)])
        store.put("completions", [dict(run_id=rid, round=0, idx=i, prompt="p", alpha=2.0, text=f"text {i}",
                                       n_tokens=2, scores=_completion_scores(10.0 + 30 * i), auto_verdict=1,
                                       human_verdict=None, reasons="") for i in range(3)])
    ids["going"] = store.create_run(replace(RunConfig(), rounds=4).to_dict(), "bundled", 42)
    store.set_run(ids["going"], stage="round 0: heal step 2/6")
    ids["going_job"] = store.submit_job("loop", dict(run_id=ids["going"]), run_id=ids["going"])
    store.update_job(ids["going_job"], status="running", started=time.time(), heartbeat=time.time(), worker="test")
    ids["never"] = store.create_run(replace(RunConfig(), rounds=1).to_dict(), "bundled", 42, status="cancelled")
    store.set_run(ids["never"], error="cancelled before it started")
    return ids


@pytest.fixture(scope="module")
def seeded_lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refresh")
    ids = seed_store(tmp / "runs.db")
    port = free_port()
    proc = start_app(tmp / "runs.db", port, workers=0, log=tmp / "app.log")
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, proc)
        yield url, tmp, ids
    finally:
        stop_app(proc)
        print((tmp / "app.log").read_text()[-3000:])


def pick(page, elem_id: str, *options: str | re.Pattern) -> None:
    """Open a dropdown once and click these options (several for a multiselect)."""
    page.locator(f"#{elem_id} input").first.click()
    for option in options:
        page.get_by_role("option", name=option).first.click()
    page.keyboard.press("Escape")


def test_results_tells_two_runs_apart_and_keeps_them_across_a_refresh(seeded_lab, browser, shot):
    url, _, ids = seeded_lab
    a, b = ids["custom"], ids["preset"]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_text("Extract vector").wait_for()
    tab(page, "Results")
    # Run pickers name a custom pair as such, not as the preset it replaced.
    pick(page, "results-runs", re.compile(rf"^run {a} · completed · 2 rounds · custom pair 'someone who"),
         re.compile(rf"^run {b} · completed · 1 round · care-over-authority"))
    probes = page.locator("#probe-answers")
    for label in (f"run {a} · base", f"run {a} · round 0", f"run {b} · base", f"run {b} · round 0"):
        expect(probes).to_contain_text(label, timeout=15_000)
    page.locator("#chart-auth .vega-embed").wait_for(timeout=15_000)
    expect(page.locator("#export-round")).to_contain_text(f"Round of run {a}")
    shot(page, "results-two-runs")

    page.reload()
    page.get_by_text("Extract vector").wait_for()
    tab(page, "Results")
    expect(page.locator("#probe-answers")).to_contain_text(f"run {b} · round 0", timeout=15_000)
    expect(page.locator("#probe-answers")).to_contain_text(f"run {a} · round 0")
    expect(page.locator("#export-round")).to_contain_text(f"Round of run {a}")
