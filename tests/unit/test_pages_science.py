"""What the Results page shows of the instruments: each run's questions with coloured verdicts,
the rule on hover, an early stop said in words, the charts once anything is measured, and
whether a persona pair has axis items (a bad file named with its line)."""

import json

from pages.science import instrument_plots, items_note, questions_html
from steerheal.store import Store
from tests.unit.test_instrument_charts import _rows


def test_questions_name_each_run_its_verdicts_and_an_early_stop(tmp_path):
    store = Store(tmp_path / "runs.db")
    first, second = store.create_run({"rounds": 3}, "bundled", 0), store.create_run({"rounds": 2}, "bundled", 0)
    _rows(store, first)
    store.set_run(first, status="completed", stop_reason="stopped early after round 1 of 3: healed incoherence 2.4")
    page = questions_html(store, [first, second])
    assert f"id='questions-run-{first}'" in page and f"id='questions-run-{second}'" in page
    assert "completed (stopped early)" in page and "after round 1 of 3" in page
    assert page.count("data-verdict=") == 12  # six questions per run
    assert "data-verdict='yes'" in page and "title='yes if" in page  # Q1 answered; the rule on hover


def test_charts_appear_once_anything_is_measured(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run({}, "bundled", 0)
    assert instrument_plots(store, [run_id]) == (None, None, None)
    _rows(store, run_id)
    assert all(chart is not None for chart in instrument_plots(store, [run_id]))


def test_the_items_note_says_whether_a_pair_can_be_scored(tmp_path):
    assert "bundled set for love-humanity" in items_note("love-humanity", False, None)
    assert "no axis items" in items_note("care-over-authority", True, None)
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "p", "pos": "a", "neg": "b"}) + "\n{broken\n")
    assert "mine.jsonl:2: not valid JSON" in items_note("care-over-authority", True, str(path))
    path.write_text(json.dumps({"prompt": "p", "pos": "a", "neg": "b", "split": "eval"}) + "\n")
    assert "Axis items: 1 from" in items_note("care-over-authority", True, str(path))


def test_the_heal_page_says_a_run_stopped_early_and_why():
    from pages.heal_status import start_note_md
    from pages.science import stop_note

    run = {"id": 3, "status": "completed", "stage": "done",
           "stop_reason": "stopped early after round 0 of 3: healed incoherence 2.6 > base 0.0 + ceiling 2"}
    assert "completed (stopped early)" in start_note_md(run, None) and "round 0 of 3" in start_note_md(run, None)
    assert "stopped-early-3" in stop_note(run) and stop_note({**run, "stop_reason": None}) == ""
    assert "completed: its charts" in start_note_md({**run, "stop_reason": None}, None)


def test_the_heal_form_sets_tinymfv_and_the_instruments():
    import pytest

    from steerheal.errors import SteerhealError
    from tests.unit.test_pages import _form

    assert _form(limit=3).tinymfv == "subset"  # rows asked for on "auto": tinymfv on that many rows
    assert _form(limit=0).tinymfv == "auto" and _form(limit=0).tinymfv_mode() == "off"
    small = _form(tinymfv="off", axis_limit=4, drift_prompts=2, drift_tokens=4, ceiling=1.5)
    assert (small.axis_limit, small.drift_prompts, small.drift_tokens, small.incoherence_ceiling) == (4, 2, 4, 1.5)
    assert _form(tinymfv="auto", axis_limit=0).axis_limit is None  # 0 = every held-out item
    with pytest.raises(SteerhealError, match="Incoherence prompts"):
        _form(tinymfv="auto", axis_limit=0, drift_prompts=50)
