"""The lab after issue 16, in Chromium on a store seeded with finished runs and a vector (no worker:
nothing is queued, only the Steer preview loads the model). A refresh keeps what you were looking
at: Results the picked runs, Heal the run that is going and a picked run's own settings, Curate its
thresholds and the set under review (item 6). Two runs can be told apart on Results (7). A refusal
stays beside the control that caused it until that input changes, and the answers on the page are
kept (8); Stop leaves a note and base and steered stream side by side (10); cosmetics (12); Heal
names its tinymfv data (4). Screenshots of every page go to test-artifacts/screenshots/."""

import re
import time

import pytest
from playwright.sync_api import expect

from steerheal.store import Store
from tests.ui.conftest import free_port, open_lab, set_number, start_app, stop_app, tab, wait_http

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
    ids["vector_job"] = seed_vector(store)
    return ids


def seed_vector(store: Store) -> int:
    """A finished extraction of the bundled model's shape (30 layers of 576), random directions:
    the Steer page previews with it, no worker needed."""
    import torch

    from steerheal.vectors import SteeringVector

    directions = torch.randn(30, 576, generator=torch.Generator().manual_seed(0))
    vector = SteeringVector(directions / directions.norm(dim=1, keepdim=True) * 4.0, {"residual_norms": [40.0] * 30})
    path = vector.save(store.lab_dir() / "vector-seeded.safetensors")
    care = __import__("steerheal.presets", fromlist=["persona_presets"]).persona_presets()["care-over-authority"]
    jid = store.submit_job("vector", dict(model="bundled", pos=care["pos"], neg=care["neg"], contexts=["Hi."]))
    store.update_job(jid, status="completed", finished=time.time(), result=dict(
        path=str(path), norms=vector.norms, residual_norms=[40.0] * 30, n_layers=30, model_id="bundled"))
    return jid


def heartbeat(tmp, ids) -> None:
    """Keep the seeded 'going' run alive (the page marks a job silent for 30 s interrupted)."""
    Store(tmp / "runs.db").update_job(ids["going_job"], heartbeat=time.time())


def one_font(page, selector: str) -> list[str]:
    """The font families Chromium actually drew this element's text with."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    return [f["familyName"] for f in cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]]


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
    page = open_lab(browser, url)
    tab(page, "Results")
    # Run pickers name a custom pair as such, not as the preset it replaced.
    pick(page, "results-runs", re.compile(rf"^run {a} · completed · 2 rounds · custom pair 'someone who"),
         re.compile(rf"^run {b} · completed · 1 round · care-over-authority"))
    probes = page.locator("#probe-answers")
    for label in (f"run {a} · base", f"run {a} · round 0", f"run {b} · base", f"run {b} · round 0"):
        expect(probes).to_contain_text(label, timeout=15_000)
    page.locator("#chart-auth .vega-embed").wait_for(timeout=15_000)
    expect(page.locator("#export-round")).to_contain_text(f"Round of run {a}")
    page.wait_for_timeout(3_000)  # the charts settle and are not redrawn over and over
    assert page.locator("#chart-auth .eta-bar").count() == 0, "the charts keep redrawing"
    shot(page, "6-results-two-runs")

    page.reload()
    page.get_by_text("Extract vector").wait_for()
    tab(page, "Results")
    expect(page.locator("#probe-answers")).to_contain_text(f"run {b} · round 0", timeout=15_000)
    expect(page.locator("#probe-answers")).to_contain_text(f"run {a} · round 0")
    expect(page.locator("#export-round")).to_contain_text(f"Round of run {a}")


def test_heal_follows_the_run_that_is_going_and_shows_a_picked_runs_settings(seeded_lab, browser, shot):
    url, tmp, ids = seeded_lab
    going, custom, never = ids["going"], ids["custom"], ids["never"]
    heartbeat(tmp, ids)
    page = open_lab(browser, url)
    tab(page, "Heal")
    # A fresh page (or a refresh) follows the run that is going, not "No run selected."
    state = page.locator("#run-state")
    expect(state).to_have_attribute("data-status", "running", timeout=15_000)
    expect(state).to_contain_text(f"run {going}")
    expect(page.locator("#start-run-status")).to_contain_text(f"Run {going} is running")
    expect(page.locator("#heal-rounds input")).to_have_value("4")
    # Before a run: which tinymfv data it will use (make test gives the real folder).
    expect(page.locator("#heal-data")).to_contain_text("tinymfv data:")
    expect(page.locator("#heal-data")).to_contain_text("132 vignettes from")

    # Picking an old run shows its own settings, not the defaults; the pick survives a refresh.
    pick(page, "heal-run", re.compile(rf"^run {custom} · completed · 2 rounds · custom pair"))
    for elem_id, value in (("heal-rounds", "2"), ("heal-alphas", "2, 5"), ("heal-n", "8"), ("heal-seed", "7"),
                           ("heal-tau", "0.7"), ("heal-rank", "8"), ("heal-epochs", "3"), ("heal-think", "3")):
        expect(page.locator(f"#{elem_id} input, #{elem_id} textarea").first).to_have_value(value, timeout=10_000)
    expect(page.locator("#heal-curation input[value='manual']")).to_be_checked()
    expect(page.locator("#heal-settings-note")).to_contain_text(f"Showing run {custom}'s settings")
    set_number(page, "heal-max-tokens", 33)  # the settings stay editable: nothing refills them
    page.wait_for_timeout(2_500)
    expect(page.locator("#heal-max-tokens input")).to_have_value("33")
    heartbeat(tmp, ids)
    page.reload()
    page.get_by_text("Extract vector").wait_for()
    tab(page, "Heal")
    expect(page.locator("#run-state")).to_contain_text(f"run {custom}", timeout=15_000)
    expect(page.locator("#heal-seed input")).to_have_value("7")

    # A run cancelled while queued says so (not "starting"); its Cancel looks disabled, not red.
    pick(page, "heal-run", re.compile(rf"^run {never} · cancelled"))
    expect(page.locator("#run-state")).to_contain_text("cancelled before it started", timeout=10_000)
    cancel = page.locator("#cancel-btn")
    expect(cancel).to_be_disabled()
    look = cancel.evaluate("b => { const c = getComputedStyle(b); return [parseFloat(c.opacity), c.cursor] }")
    assert look[0] < 0.6 and look[1] == "not-allowed", look
    shot(page, "5-heal-after-refresh")


def test_curate_keeps_its_set_and_thresholds_across_a_refresh_and_headers_stay_whole(seeded_lab, browser, shot):
    url, _, ids = seeded_lab
    page = open_lab(browser, url)
    tab(page, "Curate")
    pick(page, "curate-set", re.compile(rf"^run {ids['custom']} · round 0"))  # the older set, not the newest
    set_number(page, "th-ppl", 30)
    summary = page.locator("#curate-summary")
    expect(summary).to_contain_text("1 kept", timeout=10_000)
    page.wait_for_timeout(500)
    page.reload()
    page.get_by_text("Extract vector").wait_for()
    tab(page, "Curate")
    expect(page.locator("#curate-set input")).to_have_value(re.compile(rf"^run {ids['custom']} · round 0"),
                                                            timeout=15_000)
    expect(page.locator("#th-ppl input[type=number]")).to_have_value("30")
    expect(summary).to_contain_text("1 kept", timeout=10_000)
    page.wait_for_timeout(2_500)  # a poll later it has not jumped to the newest set
    expect(page.locator("#curate-set input")).to_have_value(re.compile(rf"^run {ids['custom']} · round 0"))

    # Every column header on one line (no "repetiti/on"); the KL label clear of its number box.
    page.locator("#curate-table th").first.wait_for()
    lines = page.evaluate("""() => [...document.querySelectorAll('#curate-table th')].map(th => {
        const words = [...th.querySelectorAll('*')].filter(e => e.children.length === 0 && e.textContent.trim()
                                                             && /[a-z]/i.test(e.textContent));
        const tops = new Set();
        for (const el of words) { const r = document.createRange(); r.selectNodeContents(el);
                                  for (const rect of r.getClientRects()) tops.add(Math.round(rect.top)); }
        return [th.textContent.trim(), tops.size]; })""")
    assert lines and all(n == 1 for _, n in lines), lines
    label = page.locator("#th-kl").get_by_text("Max KL rmse").first.bounding_box()
    box = page.locator("#th-kl input[type=number]").bounding_box()
    assert label["x"] + label["width"] <= box["x"] or label["y"] + label["height"] <= box["y"], (label, box)
    # A button that cannot act says why beside the buttons; the table keeps its rows, no "Error" badge.
    page.locator("#approve-btn").click()
    expect(page.locator("#curate-error")).to_contain_text("Not saved: Select rows first", timeout=10_000)
    expect(summary).to_contain_text("1 kept")
    # Bold text is drawn in one font, so a leading "A" is not smaller than the rest.
    assert len(set(one_font(page, "#approve-btn"))) == 1, one_font(page, "#approve-btn")
    shot(page, "4-curate-after-refresh")


def test_steer_and_personas_keep_refusals_beside_their_controls_and_stop_says_so(seeded_lab, browser, shot):
    url, _, _ = seeded_lab
    page = open_lab(browser, url)
    # Personas: an empty or identical persona warns before Extract; a refused Extract says why beside
    # the button, and the message stays until the text changes.
    pos, neg = page.locator("#persona-pos textarea"), page.locator("#persona-neg textarea")
    warnings, refusal = page.locator("#persona-warnings"), page.locator("#extract-error")
    expect(page.locator("#extract-status")).to_contain_text("The Steer page uses it now", timeout=15_000)
    pos.fill("")
    expect(warnings).to_contain_text("The positive persona is empty", timeout=10_000)
    page.locator("#extract-btn").click()
    expect(refusal).to_contain_text("Not extracted: Both personas must be non-empty", timeout=10_000)
    page.wait_for_timeout(2_500)  # a poll later
    expect(refusal).to_contain_text("Both personas must be non-empty")
    pos.fill(neg.input_value())
    expect(refusal).to_be_empty(timeout=10_000)
    expect(warnings).to_contain_text("identical")
    shot(page, "1-personas-refusal")

    # Steer: a good preview first; base and steered grow together (one batch of two rows).
    tab(page, "Steer")
    set_number(page, "steer-alpha", 6)
    set_number(page, "steer-max-tokens", 12)
    page.locator("#preview-btn").click()
    expect(page.locator("#preview-state")).to_have_attribute("data-state", "done", timeout=120_000)
    base = page.locator("#base-out textarea").input_value()
    assert base and page.locator("#steered-out textarea").input_value()
    # A layer band outside the model: said beside the settings, kept, the answers untouched.
    layers = page.locator("#steer-layers textarea, #steer-layers input").first
    layers.fill("50-60")
    layers.press("Tab")
    page.locator("#preview-btn").click()
    error = page.locator("#steer-error")
    expect(error).to_contain_text("outside the model", timeout=30_000)
    page.wait_for_timeout(2_500)  # a poll later
    expect(error).to_contain_text("outside the model")
    assert page.locator("#base-out textarea").input_value() == base
    assert page.locator("#base-out .error, #steered-out .error").count() == 0
    shot(page, "3-steer-refusal")
    layers.fill("0.45-0.55")
    layers.press("Tab")
    expect(error).to_be_empty(timeout=10_000)

    # Stop: a long preview stopped midway leaves both answers partial and a visible note.
    set_number(page, "steer-max-tokens", 400)
    page.locator("#preview-btn").click()
    expect(page.locator("#preview-state")).to_have_attribute("data-state", "running", timeout=60_000)
    expect(page.locator("#preview-state")).to_contain_text("side by side")
    expect(page.locator("#steered-out textarea")).not_to_have_value("", timeout=30_000)
    assert page.locator("#base-out textarea").input_value()  # both stream at once
    page.locator("#preview-stop").click()
    expect(page.locator("#preview-state")).to_have_attribute("data-state", "stopped", timeout=30_000)
    expect(page.locator("#preview-state")).to_contain_text("Stopped")
    assert len(set(one_font(page, "#tab-steer h3"))) == 1  # "A batch for curation": one font throughout
    shot(page, "3-steer-stopped")
