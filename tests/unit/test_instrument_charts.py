"""The instrument charts and the report: intervals drawn, the base's zero incoherence visible on
the log axis, runs told apart, every trajectory point drawn (the report once lost them to a
shared colour scale), and the report leading with the questions and any early stop."""

import json

from steerheal import instrument_charts
from steerheal.report import build_report, run_charts
from steerheal.store import Store


def _rows(store: Store, run_id: int) -> None:
    for round_, stage, mean, inc in [(-1, "base", 0.1, 0.0), (-1, "prompted", 0.2, 0.3), (0, "steered", 0.6, 1.4),
                                     (0, "healed", 0.4, 0.2), (1, "steered", 0.7, 1.5), (1, "healed", 0.5, 0.25)]:
        store.put("axis_evals", [dict(run_id=run_id, round=round_, stage=stage, mean=mean, ci_low=mean - 0.1,
                                      ci_high=mean + 0.1, share_positive=0.6, n=10, scores=[mean] * 10, meta={})])
        store.put("drift_evals", [dict(run_id=run_id, round=round_, stage=stage, headline=inc, kl_rmse=inc,
                                       kl_mean=inc / 2, nll_excess=inc, repetition=0.05, rows=[{"kl_rmse": inc}] * 4,
                                       intervals={"kl_rmse": {"value": inc, "low": inc * 0.8, "high": inc * 1.2}},
                                       meta={})])


def _data(chart) -> list[dict]:
    spec = chart.to_dict()
    return [row for rows in spec.get("datasets", {}).values() for row in rows]


def test_axis_and_incoherence_charts_draw_intervals_and_the_base(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run({}, "bundled", 0)
    _rows(store, run_id)
    axis = instrument_charts.axis_per_round(store.rows("axis_evals", run_id))
    spec = json.dumps(axis.to_dict())
    assert '"errorbar"' in spec and '"ci_low"' in spec and '"strokeDash"' in spec
    assert {r["stage"] for r in _data(axis)} >= {"steered", "healed", "base", "prompted"}
    inc = instrument_charts.incoherence_per_round(store.rows("drift_evals", run_id))
    assert '"type": "log"' in json.dumps(inc.to_dict())
    base = [r for r in _data(inc) if r["stage"] == "base"]
    assert base and base[0]["incoherence_shown"] == instrument_charts.INCOHERENCE_FLOOR  # 0 cannot sit on a log axis


def test_the_trajectory_has_a_point_per_stage_and_two_runs_differ_by_shape(tmp_path):
    store = Store(tmp_path / "runs.db")
    runs = [store.create_run({}, "bundled", 0) for _ in range(2)]
    for r in runs:
        _rows(store, r)
    axis = [a for r in runs for a in store.rows("axis_evals", r)]
    drift = [d for r in runs for d in store.rows("drift_evals", r)]
    chart = instrument_charts.trait_vs_incoherence(axis, drift)
    labels = {(r["run"], r["label"]) for r in _data(chart)}
    assert {("run 1", "base"), ("run 1", "s0"), ("run 1", "h1"), ("run 2", "h1")} <= labels
    assert '"shape": {"field": "run"' in json.dumps(chart.to_dict())


def test_every_chart_row_in_the_report_keeps_its_own_colour_scale():
    """The trajectory colours by run, the incoherence chart by stage with a fixed domain: shared,
    the run points fall outside that domain and are drawn in no colour at all."""
    evals = [dict(run_id=1, round=-1, stage="base", auth_nats=-2.0, care_nats=-1.1, coherence=0.97),
             dict(run_id=1, round=0, stage="healed", auth_nats=-2.1, care_nats=-1.0, coherence=0.97),
             dict(run_id=1, round=0, stage="steered", auth_nats=-2.1, care_nats=-1.0, coherence=0.96)]
    spec = run_charts(evals).to_dict()
    for row in spec["vconcat"]:
        assert row["resolve"]["scale"]["color"] == "independent"


def test_the_report_leads_with_the_questions_and_says_why_a_run_stopped(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run({"rounds": 3}, "bundled", 0)
    _rows(store, run_id)
    store.set_run(run_id, status="completed", stop_reason="stopped early after round 1 of 3: healed incoherence 2.5")
    page = build_report(store, [run_id])
    assert "The method&#x27;s questions" in page or "The method's questions" in page
    assert "stopped early after round 1 of 3" in page
    assert page.index("questions") < page.index("tinymfv per round")
    assert "Q1 does heal remove the incoherence" in page and "Trait and incoherence per round" in page
