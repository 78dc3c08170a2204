"""A pair of your own survives a refresh, in Chromium (issue 16): write a custom pair and a
two-line context pool, extract, reload; the boxes hold the custom text (read back from the
store), the preset box says "custom" rather than care-over-authority's description, Steer names
the vector it uses (pair, 2 contexts, layers, when) and Heal the pair its run will use, and a run
started after the refresh is stored with the custom personas."""

import re

import pytest
from playwright.sync_api import expect

from steerheal.store import Store
from tests.ui.conftest import TINY_HEAL_INSTRUMENTS, open_lab, set_number, tab

pytestmark = [pytest.mark.integration, pytest.mark.ui]
LONG = 120_000  # ms: a 2-context extraction on 2 CPU cores, model load included
POS = "someone who always stops to help a stranger in trouble"
NEG = "someone who always walks past a stranger in trouble"
POOL = "My neighbour fell on the ice. What now?\nA child is lost at the station. What do I do?"


def test_a_custom_pair_and_its_vector_survive_a_refresh(app_url, browser, shot):
    url, tmp = app_url
    page = open_lab(browser, url)
    pos, neg = page.locator("#persona-pos textarea"), page.locator("#persona-neg textarea")
    pool, info = page.locator("#persona-contexts textarea"), page.locator("#persona-preset-info")
    expect(info).to_contain_text("Care over authority")
    pos.fill(POS)
    neg.fill(NEG)
    pool.fill(POOL)
    # Before any refresh: the preset box follows the text, no preset's description beside custom text.
    expect(info).to_contain_text("Custom pair", timeout=10_000)
    expect(info).not_to_contain_text("Care over authority")
    expect(page.locator("#persona-preset input")).to_have_value("custom")
    # Issue 17: a pair of your own has no axis items; a file given for it is checked, its errors named by line.
    items = page.locator("#items-note-box")
    expect(items).to_contain_text("no axis items", timeout=10_000)
    bad = tmp / "my-items.jsonl"
    bad.write_text('{"prompt": "A stranger fell. Help?", "pos": "Yes, at once.", "neg": "No, walk on."}\n'
                   '{"prompt": "A child is lost.", "pos": ""}\n')
    page.locator("#items-file input[type=file]").set_input_files(str(bad))
    expect(items).to_contain_text("my-items.jsonl:2: missing field neg", timeout=20_000)
    shot(page, "personas-items-error")
    page.locator("#extract-btn").click()
    page.locator("#extract-status").get_by_text("The Steer page uses it now").wait_for(timeout=LONG)

    page.reload()
    page.get_by_text("Extract vector").wait_for()
    expect(pos).to_have_value(POS, timeout=15_000)
    expect(neg).to_have_value(NEG)
    expect(pool).to_have_value(POOL)
    expect(page.locator("#persona-preset input")).to_have_value("custom")
    expect(info).to_contain_text("Custom pair")
    expect(info).not_to_contain_text("Care over authority")
    expect(page.locator("#extract-status")).to_contain_text("The Steer page uses it now")
    page.locator("#norms-chart .vega-embed").wait_for(timeout=30_000)
    shot(page, "personas-custom-after-refresh")

    # Steer names its vector: the custom pair, its 2 contexts, its layers, when and which job.
    tab(page, "Steer")
    line = page.locator("#steer-vector")
    expect(line).to_contain_text(f"custom pair '{POS[:20]}", timeout=10_000)
    expect(line).to_contain_text(re.compile(r"2 contexts, \d+ layers, extracted [\d:-]+( [\d:]+)? \(job \d+\)"))
    shot(page, "steer-vector-line")

    # Heal says which pair the run will use, and the run is stored with it (not the preset).
    tab(page, "Heal")
    uses = page.locator("#heal-uses")
    expect(uses).to_contain_text(f"This run will use: custom pair '{POS[:20]}", timeout=10_000)
    expect(uses).to_contain_text("2 contexts")
    expect(uses).to_contain_text("the Steer page previews the same pair and contexts")
    shot(page, "heal-uses-line")
    for elem_id, value in (("heal-rounds", 1), ("heal-n", 4), ("heal-max-tokens", 4), ("heal-epochs", 1),
                           ("heal-eval-limit", 1), ("heal-think", 1), ("heal-probe-tokens", 2),
                           *TINY_HEAL_INSTRUMENTS):
        set_number(page, elem_id, value)
    page.locator("#start-run-btn").click()
    expect(page.locator("#start-run-status")).to_contain_text(re.compile(r"Run \d+ (queued|is running)"),
                                                              timeout=15_000)
    run = Store(tmp / "runs.db").runs()[-1]
    assert (run["config"]["pos"], run["config"]["neg"]) == (POS, NEG)
    assert run["config"]["contexts"] == POOL.splitlines()
    cancel = page.locator("#cancel-btn")  # stop it: the worker must not carry on after this module
    expect(cancel).to_be_enabled(timeout=10_000)
    cancel.click()
    expect(page.locator("#run-state")).to_have_attribute("data-status", re.compile("cancelled|interrupted"),
                                                         timeout=60_000)
