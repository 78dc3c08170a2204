"""A new user's first session, in Chromium: extract a vector, preview at alpha 0 and at a
strong alpha, generate a few completions, approve and reject some, run a one-round loop with
tiny settings, and see its Results chart and probe answers. Screenshots of every page go to
test-artifacts/screenshots/."""

import re
import time

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import SCREENSHOTS, TINY_HEAL_INSTRUMENTS, open_lab, set_number, tab

pytestmark = [pytest.mark.integration, pytest.mark.ui]
LONG = 600_000  # ms: model work on 2 CPU cores


def test_a_new_user_goes_from_personas_to_results(app_url, browser, shot):
    url, _ = app_url
    page = open_lab(browser, url)
    shot(page, "1-personas")

    # Personas: extract the default care-over-authority vector from a smaller context pool
    # (quicker on 2 cores; the loop below uses the same pool); the norms chart appears.
    pool = page.locator("#persona-contexts textarea")
    pool.fill("\n".join(pool.input_value().splitlines()[:8]))
    page.locator("#extract-btn").click()
    page.locator("#extract-status").get_by_text("The Steer page uses it now").wait_for(timeout=LONG)
    page.locator("#norms-chart .vega-embed").wait_for(timeout=30_000)
    shot(page, "2-personas-extracted")

    # Steer: alpha 0 gives the base text exactly; a strong alpha changes it and shades tokens by KL.
    tab(page, "Steer")
    set_number(page, "steer-alpha", 0)
    set_number(page, "steer-max-tokens", 16)
    page.locator("#preview-btn").click()
    page.locator("#kl-shaded[data-alpha='0']").wait_for(timeout=LONG)
    base = page.locator("#base-out textarea").input_value()
    steered = page.locator("#steered-out textarea").input_value()
    assert base and steered == base
    set_number(page, "steer-alpha", 10)
    page.locator("#preview-btn").click()
    page.locator("#kl-shaded[data-alpha='10']").wait_for(timeout=LONG)
    strong = page.locator("#steered-out textarea").input_value()
    assert strong and strong != base
    assert page.locator("#kl-shaded span[title^='KL']").count() > 5
    shot(page, "3-steer")

    # A small batch for curation in the background.
    set_number(page, "batch-n", 4)
    set_number(page, "batch-max-tokens", 12)
    page.locator("#batch-btn").click()
    page.locator("#batch-status").get_by_text("ready on the Curate page").wait_for(timeout=LONG)

    # Curate: approve one row, reject another; the verdicts are saved and counted.
    tab(page, "Curate")
    rows = page.locator("#curate-table [role=row]").filter(has=page.locator("[role=gridcell]"))
    rows.nth(3).wait_for(timeout=60_000)
    rows.nth(0).locator("[role=gridcell]").nth(3).click()
    page.locator("#curate-selected").get_by_text("Selected:").wait_for()
    page.locator("#approve-btn").click()
    page.locator("#curate-summary").get_by_text("1 reviewed by hand").wait_for(timeout=30_000)
    rows.nth(1).locator("[role=gridcell]").nth(3).click()
    page.locator("#curate-selected").get_by_text("Selected:").wait_for()
    page.locator("#reject-btn").click()
    page.locator("#curate-summary").get_by_text("2 reviewed by hand").wait_for(timeout=30_000)
    assert page.locator("#curate-table").get_by_text("approved").count() >= 1
    assert page.locator("#curate-table").get_by_text("rejected").count() >= 1
    shot(page, "4-curate")

    # Heal: a one-round loop with tiny settings, followed live to the end.
    tab(page, "Heal")
    for elem_id, value in (("heal-rounds", 1), ("heal-n", 6), ("heal-max-tokens", 16), ("heal-epochs", 1),
                           ("heal-eval-limit", 3), ("heal-think", 1), ("heal-probe-tokens", 12),
                           *TINY_HEAL_INSTRUMENTS):
        set_number(page, elem_id, value)
    page.locator("#start-run-btn").click()
    page.locator("#start-run-status").get_by_text(re.compile(r"Run \d+ queued")).wait_for(timeout=30_000)

    # While the worker trains, a second visitor's page load stays quick (the UI never runs the job).
    page.locator("#run-state[data-status='running']").wait_for(timeout=120_000)
    # While it goes, Start run waits and the line beside it follows the run (issue 16).
    start_btn, start_line = page.locator("#start-run-btn"), page.locator("#start-run-status")
    expect(start_btn).to_be_disabled(timeout=5_000)
    expect(start_line).to_contain_text(re.compile(r"Run \d+ is running"), timeout=120_000)
    expect(start_btn).to_be_disabled()
    other = browser.new_page()
    started = time.perf_counter()
    other.goto(url, wait_until="domcontentloaded")
    served = time.perf_counter() - started
    other.get_by_text("Extract vector").wait_for()
    rendered = time.perf_counter() - started
    other.close()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "page-load-during-job.txt").write_text(
        f"served (DOMContentLoaded) {served:.3f} s; rendered (first page usable) {rendered:.3f} s\n")
    # Target 1 s (issue 7); measured 0.1-0.9 s here with the test itself loading the machine.
    assert served < 2.0, f"the app took {served:.2f} s to serve a page while a job ran"
    # Rendering is the browser's work (Gradio's JavaScript): 2-3 s on 2 slow cores even when idle.
    assert rendered < 10.0, f"the page took {rendered:.2f} s to become usable while a job ran"
    page.locator("#run-state[data-status='completed']").wait_for(timeout=LONG)
    expect(start_btn).to_be_enabled(timeout=10_000)
    expect(start_line).not_to_contain_text("queued", timeout=10_000)
    expect(start_line).to_contain_text(re.compile(r"Run \d+ completed"))
    page.locator("#loss-chart .vega-embed").wait_for(timeout=30_000)
    shot(page, "5-heal")

    # Results: pick the run; the charts and the probe answers appear.
    tab(page, "Results")
    page.locator("#results-runs input").click()
    page.get_by_role("option", name=re.compile(r"^run \d+ · completed")).first.click()
    page.keyboard.press("Escape")
    page.locator("#chart-auth .vega-embed").wait_for(timeout=60_000)
    page.locator("#chart-incoherence .vega-embed").wait_for(timeout=60_000)
    # Issue 17: the method's questions lead, with the axis and offline-incoherence charts.
    questions = page.locator("#results-questions")
    expect(questions).to_contain_text("Q1 does heal remove the incoherence", timeout=60_000)
    assert questions.locator("[data-verdict]").count() == 6
    page.locator("#chart-axis .vega-embed").wait_for(timeout=60_000)
    page.locator("#chart-drift .vega-embed").wait_for(timeout=60_000)
    page.locator("#probe-answers").get_by_text("Do you love humanity").first.wait_for(timeout=60_000)
    shot(page, "6-results")

    # A browser refresh loses nothing: the human verdicts are still there.
    page.reload()
    tab(page, "Curate")
    page.locator("#curate-set input").click()
    page.get_by_role("option", name=re.compile(r"^batch \d+")).first.click()
    page.locator("#curate-summary").get_by_text("2 reviewed by hand").wait_for(timeout=30_000)
