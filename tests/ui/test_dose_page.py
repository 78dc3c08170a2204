"""The dose on the Steer page, in Chromium (issue 18): a preview with backtrack-and-replay outlines
the replayed spans and lists them; the dose curve runs as a job in the app's worker, its chart is
drawn while points arrive, the calibrated alpha is said and goes to the preview's slider; a second
dose job is cancelled."""

import re

import pytest
from playwright.sync_api import expect

from steerheal.store import Store
from tests.ui.conftest import open_lab, served, set_number, tab
from tests.ui.test_lab_refresh import seed_vector

pytestmark = [pytest.mark.integration, pytest.mark.ui]


@pytest.fixture(scope="module")
def lab_with_a_vector(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dose")
    seed_vector(Store(tmp / "runs.db"))
    with served(tmp / "runs.db") as url:
        yield url, tmp


def fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(text)
    box.press("Tab")


def test_replays_are_outlined_and_the_dose_curve_is_drawn_as_it_runs_and_calibrates(lab_with_a_vector, browser, shot):
    url, tmp = lab_with_a_vector
    page = open_lab(browser, url)
    expect(page.locator("#extract-status")).to_contain_text("The Steer page uses it now", timeout=15_000)
    tab(page, "Steer")

    # Backtrack and replay: a low threshold at a strong alpha replays windows, outlined in blue.
    set_number(page, "steer-alpha", 12)
    set_number(page, "steer-max-tokens", 12)
    page.locator("#steer-replay input").check()
    set_number(page, "steer-replay-kl", 0.05)
    set_number(page, "steer-replay-window", 4)
    page.locator("#preview-btn").click()
    expect(page.locator("#preview-state")).to_have_attribute("data-state", "done", timeout=120_000)
    shaded = page.locator("#kl-shaded")
    expect(shaded).to_have_attribute("data-replays", re.compile(r"^[1-9]"))
    assert page.locator("#kl-shaded .sh-replayed").count() >= 1
    expect(page.locator("#replay-list")).to_contain_text("replayed at α 6")
    shot(page, "3-steer-replayed")

    # The dose curve: a job; the chart appears while it still runs, then the alpha found is said.
    fill(page, "dose-alphas", "0, 12")
    page.locator("#dose-target input").click()
    page.get_by_role("option", name=re.compile("KL budget")).click()
    set_number(page, "dose-target-value", 0.5)
    set_number(page, "dose-prompts", 2)
    set_number(page, "dose-tokens", 8)
    set_number(page, "dose-axis-items", 4)
    set_number(page, "dose-drift-prompts", 2)
    page.locator("#dose-btn").click()
    status, chart = page.locator("#dose-status"), page.locator("#dose-chart")
    expect(status.locator("[data-status='running']")).to_be_visible(timeout=60_000)
    expect(chart.locator("canvas, svg").first).to_be_visible(timeout=120_000)
    assert status.locator("[data-status='running']").count() == 1, "the chart should be drawn before the job ends"
    found = page.locator("#dose-found")
    expect(found).to_contain_text("Calibrated: α =", timeout=240_000)
    alpha = float(found.get_attribute("data-alpha"))
    assert 0 < alpha < 12
    page.locator("#dose-use").click()
    expect(page.locator("#steer-alpha input[type=number]")).to_have_value(f"{round(alpha * 4) / 4:g}",
                                                                          timeout=10_000)
    shot(page, "3-steer-dose-curve")

    # A second curve, cancelled: the job ends cancelled and the button comes back.
    fill(page, "dose-alphas", "0, 2, 4, 6, 8, 10, 12")
    page.locator("#dose-btn").click()
    expect(status.locator("[data-status='running']")).to_be_visible(timeout=60_000)
    page.locator("#dose-cancel").click()
    expect(status.locator("[data-status='cancelled']")).to_be_visible(timeout=60_000)
    expect(page.locator("#dose-btn")).to_be_enabled(timeout=10_000)
