"""Numbers from the 28 demo vignettes never pass for tinymfv: every place that shows a run's
eval numbers (runs, the report, the model card) names the data and says it is not comparable."""

import json

from steerheal.evals.tinymfv_data import DEMO_SOURCE, demo_data_note
from steerheal.model_card import model_card
from steerheal.report import build_report
from steerheal.store import Store
from tests.conftest import run_cli


def _run_with_evals(store: Store, source: str, comparable: bool) -> int:
    run_id = store.create_run({"pair": "care-over-authority"}, "bundled", 0, status="completed")
    store.put("evals", [dict(run_id=run_id, round=r, stage=stage, auth_nats=-4.5, care_nats=-4.3, coherence=0.13,
                             top1_acc=0.1, metrics={}, rows=[],
                             meta={"data_source": source, "comparable": comparable})
                        for r, stage in ((-1, "base"), (0, "steered"), (0, "healed"))])
    store.put("rounds", [dict(run_id=run_id, round=0, status="completed", started=0.0, finished=1.0)])
    return run_id


def test_demo_rows_are_named_and_tinymfv_rows_are_not(tmp_path):
    store = Store(tmp_path / "runs.db")
    demo = _run_with_evals(store, DEMO_SOURCE, False)
    real = _run_with_evals(store, "tinymfv files: /data/vignettes_classic_other_violate.jsonl", True)
    note = demo_data_note(store.rows("evals", demo))
    assert "demo vignettes" in note and "not comparable" in note and "STEERHEAL_TINYMFV_DIR" in note
    assert demo_data_note(store.rows("evals", real)) is None
    assert demo_data_note([{"meta": json.dumps({"data_source": DEMO_SOURCE})}]) is not None  # JSON as stored

    assert "Demo data" in build_report(store, [demo]) and "Demo data" not in build_report(store, [real])
    assert "Demo data" in model_card(store, demo, 0) and "Demo data" not in model_card(store, real, 0)

    listed = {r["id"]: r for r in json.loads(run_cli("runs", "--db", tmp_path / "runs.db", "--json").stdout)}
    assert listed[demo]["tinymfv_comparable"] is False and listed[real]["tinymfv_comparable"] is True
    table = run_cli("runs", "--db", tmp_path / "runs.db").stdout.splitlines()
    assert "NOT comparable" in next(line for line in table if line.startswith(f"run {demo:>3}"))
    assert "NOT comparable" not in next(line for line in table if line.startswith(f"run {real:>3}"))
