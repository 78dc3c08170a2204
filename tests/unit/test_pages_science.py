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
