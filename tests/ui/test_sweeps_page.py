"""Sweeps in the browser: a finished 2-run sweep (run here first, on the local backend) shows its
runs on Heal and is compared per setting on Results, with a chart; a refused sweep says why
beside its buttons and stores nothing; a sweep started from the Heal form's settings is queued
with them and cancelled, and shows it."""

import re

import pytest
from playwright.sync_api import expect

from steerheal.store import Store
from steerheal.sweeps import sweeps
from tests.ui.conftest import TINY_HEAL_INSTRUMENTS, open_lab, served, set_number, tab

pytestmark = [pytest.mark.integration, pytest.mark.ui]


def test_a_finished_sweep_is_compared_on_results_and_one_from_the_heal_form_is_queued_and_cancelled(
        browser, tmp_path, shot):
    from steerheal import sweeps_local
    from steerheal.sweep_spec import SweepSpec
    from steerheal.sweeps import create_sweep
    from tests.integration.test_sweeps import TINY

    db = tmp_path / "runs.db"
    sid, _ = create_sweep(Store(db), SweepSpec(base=TINY, axes={"agg": ["mean", "rmse"]}, name="tiny"), "local")
    sweeps_local.drive(Store(db), sid)
    with served(db) as url:
        page = open_lab(browser, url)
        tab(page, "Heal")
        for elem_id, value in (("heal-rounds", 1), ("heal-n", 5), ("heal-max-tokens", 8), *TINY_HEAL_INSTRUMENTS):
            set_number(page, elem_id, value)
        page.locator("#sweep-section").get_by_text("Sweep: many runs").click()
        axes = page.locator("#sweep-axes textarea")
        note = page.locator("#start-sweep-status")
        pick = page.locator("#sweep-pick")
        pick.locator("input").click()
        page.get_by_role("option", name=re.compile(r"sweep 1 ")).click()
        runs = page.locator("#sweep-runs-table")
        expect(runs.locator("tr[data-status='completed']")).to_have_count(2, timeout=15_000)
        expect(runs).to_contain_text("agg=mean")
        expect(page.locator("#sweep-state")).to_have_attribute("data-status", "completed")

        axes.fill("bogus = 1, 2")
        page.locator("#start-sweep-btn").click()
        expect(note).to_contain_text("Not started: Unknown setting 'bogus'", timeout=15_000)
        assert len(sweeps(Store(db))) == 1

        # A second sweep, cancelled while its first run goes: its runs say so, the first sweep's stay.
        axes.fill("seed = 5, 6")
        page.locator("#start-sweep-btn").click()
        expect(note).to_contain_text("Sweep 2: 2 runs queued", timeout=15_000)
        page.locator("#cancel-sweep-btn").click()
        expect(page.locator("#sweep-state")).to_have_attribute("data-status", "cancelled", timeout=60_000)
        shot(page, "sweep-1-heal")
        store = Store(db)
        assert {r["status"] for r in store.runs() if r["sweep_id"] == 1} == {"completed"}
        queued = [r for r in store.runs() if r["sweep_id"] == 2]
        assert {r["status"] for r in queued} == {"cancelled"} and [r["seed"] for r in queued] == [5, 6]
        assert {(r["config"]["rounds"], r["config"]["n_completions"], r["config"]["max_new_tokens"])
                for r in queued} == {(1, 5, 8)}  # the form's settings, the axis's seeds

        tab(page, "Results")
        pick = page.locator("#results-sweep")
        pick.locator("input").click()
        page.get_by_role("option", name=re.compile(r"sweep 1 ")).click()
        table = page.locator("#sweep-compare-table")
        expect(table).to_contain_text("agg=mean", timeout=30_000)
        expect(table).to_contain_text("agg=rmse")
        expect(table).to_contain_text("one seed: no interval")
        # the second setting against the first, paired by their one shared seed
        expect(page.locator("#sweep-versus")).to_contain_text("agg=rmse minus agg=mean, paired over seed 42")
        expect(page.locator("#chart-sweep canvas, #chart-sweep svg").first).to_be_visible(timeout=30_000)
        shot(page, "sweep-2-results")
