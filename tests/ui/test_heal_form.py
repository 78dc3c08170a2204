"""The Heal form as a new user meets it, in Chromium (issue 16): a refused setting is said beside
Start run and stays there until the field changes; the button comes back so the user can fix the
field and press again; the minimums are on the form; a good form queues a run, the button waits
while it goes and comes back once it has stopped (here: cancelled at once to keep this quick)."""

import re

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import open_lab, set_number, tab

pytestmark = [pytest.mark.integration, pytest.mark.ui]


def test_form_errors_stay_beside_start_run_and_the_button_comes_back(app_url, browser, shot):
    url, _ = app_url
    page = open_lab(browser, url)
    tab(page, "Heal")
    button, line = page.locator("#start-run-btn"), page.locator("#start-run-status")
    expect(page.locator("#heal-n")).to_contain_text("min 4")
    expect(page.locator("#heal-n")).to_contain_text("more is safer")

    # Rounds 0: refused, said beside the button, and still there after the toast has gone.
    set_number(page, "heal-rounds", 0)
    button.click()
    expect(line).to_contain_text("Rounds must be at least 1, got 0.", timeout=15_000)
    expect(button).to_be_enabled(timeout=10_000)
    page.wait_for_timeout(5_000)  # two polls of the page's timer later
    expect(line).to_contain_text("Rounds must be at least 1, got 0.")
    expect(button).to_be_enabled()
    shot(page, "heal-form-error")

    # Fixing the field clears the message; too few completions are refused before queueing.
    set_number(page, "heal-rounds", 1)
    expect(line).not_to_contain_text("Rounds must", timeout=10_000)
    set_number(page, "heal-n", 3)
    button.click()
    expect(line).to_contain_text("Completions per round must be at least 4, got 3", timeout=15_000)
    expect(button).to_be_enabled(timeout=10_000)
    assert page.locator("#heal-run input").input_value() == ""  # nothing was queued

    # Everything fixed: the same button queues a run and waits while it goes.
    for elem_id, value in (("heal-n", 6), ("heal-max-tokens", 8), ("heal-epochs", 1), ("heal-eval-limit", 2),
                           ("heal-think", 1), ("heal-probe-tokens", 4)):
        set_number(page, elem_id, value)
    expect(line).not_to_contain_text("Completions per round", timeout=10_000)
    button.click()
    expect(line).to_contain_text(re.compile(r"Run \d+ (queued|is running)"), timeout=15_000)
    expect(button).to_be_disabled(timeout=5_000)

    # Cancel it; once it has stopped, the button is back and the line no longer says "queued".
    cancel = page.locator("#cancel-btn")
    expect(cancel).to_be_enabled(timeout=10_000)
    cancel.click()
    # A cancel is a normal end: the run says cancelled (interrupted is for a worker that died).
    expect(page.locator("#run-state")).to_have_attribute("data-status", "cancelled", timeout=60_000)
    expect(button).to_be_enabled(timeout=10_000)
    expect(line).not_to_contain_text("queued", timeout=10_000)
    expect(line).to_contain_text(re.compile(r"Run \d+ cancelled"))
    shot(page, "heal-form-cancelled")
