"""One run in plain data: per-stage numbers from every instrument, why it stopped, and the
answers to the method's questions. Shared by `steerheal summary`, `runs --json`, the report
and the Results page."""

from __future__ import annotations

import json

from steerheal.store import Store
from steerheal.verdicts import answer_questions

STAGE_ORDER = {"base": 0, "prompted": 1, "random": 2, "steered": 3, "healed": 4}


def outcome(run: dict) -> str:
    """The run's status in words: a run that stopped early says so (not a bare 'completed')."""
    if run["status"] == "completed" and run.get("stop_reason"):
        return "completed (stopped early)"
    return run["status"]


def stage_table(store: Store, run_id: int) -> list[dict]:
    """One row per (round, stage) measured by any instrument, in loop order."""
    keys: dict[tuple[int, str], dict] = {}
    for table in ("axis_evals", "drift_evals", "evals"):
        for r in store.rows(table, run_id):
            keys.setdefault((r["round"], r["stage"]), {})[table] = r
    out = []
    for (round_, stage), found in sorted(keys.items(), key=lambda kv: (kv[0][0], STAGE_ORDER.get(kv[0][1], 9))):
        a, d, t = found.get("axis_evals"), found.get("drift_evals"), found.get("evals")
        out.append(dict(round=round_, stage=stage,
                        axis=a["mean"] if a else None, axis_low=a["ci_low"] if a else None,
                        axis_high=a["ci_high"] if a else None, axis_share_positive=a["share_positive"] if a else None,
                        axis_n=a["n"] if a else None,
                        incoherence=d["headline"] if d else None, kl_mean=d["kl_mean"] if d else None,
                        nll_excess=d["nll_excess"] if d else None, repetition=d["repetition"] if d else None,
                        share_over_1=d["share_over_1"] if d else None,
                        auth_nats=t["auth_nats"] if t else None, tinymfv_coherence=t["coherence"] if t else None))
    return out


def run_summary(store: Store, run_id: int) -> dict:
    run = store.run(run_id)
    absorbed = [dict(round=r["round"], cos=r["cos"], coef=r["coef"], share_of_alpha=r["share_of_alpha"],
                     alpha=r["alpha"]) for r in store.rows("absorption", run_id)]
    calibrated = [dict(round=c["round"], kind=c["kind"], target=c["target"], alpha=c["alpha"], measure=c["measure"],
                       evaluations=c["evaluations"], reached=bool(c["reached"]), alphas=json.loads(c["alphas"]))
                  for c in sorted(store.rows("calibrations", run_id), key=lambda c: c["round"])]
    return {"run_id": run_id, "status": outcome(run), "stop_reason": run.get("stop_reason"),
            "rounds_completed": sum(r["status"] == "completed" for r in store.rows("rounds", run_id)),
            "rounds_asked": run["config"].get("rounds"), "table": stage_table(store, run_id),
            "absorption": absorbed, "calibrations": calibrated,
            "questions": [a.to_dict() for a in answer_questions(store, run_id)]}
