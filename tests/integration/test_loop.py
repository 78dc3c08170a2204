"""The loop's config checks and its manual-curation pause, on the bundled model. (A whole run
with every stage stored is checked in test_worker.py, kill-and-resume in test_resume_and_export.py.)"""

import pytest

from steerheal.errors import SteerhealError
from steerheal.heal import HealConfig
from steerheal.loop import run_loop, start_run
from steerheal.store import Store
from tests.conftest import tiny_run_config

pytestmark = pytest.mark.integration
TINY = tiny_run_config()


@pytest.mark.parametrize("kwargs, message", [
    ({"rounds": 0}, "rounds"), ({"n_completions": 2}, "n_completions"), ({"curation": "maybe"}, "curation"),
    ({"heal": HealConfig(agg="median")}, "aggregate"), ({"heal": HealConfig(tau=-1.0)}, "tau"),
    ({"pair": "nope"}, "Unknown persona preset"),
])
def test_bad_config_fails_before_anything_is_written(tmp_path, kwargs, message):
    from dataclasses import replace

    store = Store(tmp_path / "runs.db")
    with pytest.raises(SteerhealError, match=message):
        start_run(store, replace(TINY, **kwargs))
    assert store.db["runs"].count == 0


def test_manual_curation_waits_for_a_person_then_trains_on_their_verdicts(tmp_path):
    from dataclasses import replace

    store = Store(tmp_path / "runs.db")
    run_id = start_run(store, replace(TINY, curation="manual", seed=3, tinymfv="off"))  # no evals: not checked here
    events = []
    run = run_loop(store, run_id, lambda stage, info: events.append((stage, info)))
    assert run["status"] == "waiting" and "waiting for curation" in run["stage"]
    # the vector stage counts its prompts (the Heal page draws a bar from it): 8 contexts x 2 personas
    counts = [(info["step"], info["of"]) for stage, info in events if stage == "vector" and "step" in info]
    assert counts and counts[-1] == (16, 16) and all(a <= b for (a, _), (b, _) in zip(counts, counts[1:]))
    assert not store.rows("train_logs", run_id) and len(store.rows("completions", run_id, 0)) == 6
    assert run_loop(store, run_id)["status"] == "waiting"  # nothing moves until a person has looked
    ids = [c["id"] for c in store.rows("completions", run_id, 0)]
    store.set_human_verdict(ids[:5], True)
    store.set_human_verdict(ids[5], False)
    store.mark_curated(run_id, 0)
    run = run_loop(store, run_id)
    assert run["status"] == "completed"
    assert store.rows("train_logs", run_id, 0)
    assert [c["human_verdict"] for c in store.rows("completions", run_id, 0)] == [1, 1, 1, 1, 1, 0]


def test_a_cancel_during_an_eval_stops_within_it_and_the_run_says_cancelled(tmp_path):
    from dataclasses import replace

    store = Store(tmp_path / "runs.db")
    run_id = start_run(store, replace(TINY, seed=5))
    asked = {"stop": False}

    def progress(stage, info):
        if stage == "eval base":  # the person presses Cancel as the base eval starts
            asked["stop"] = True

    with pytest.raises(InterruptedError):
        run_loop(store, run_id, progress, should_stop=lambda: asked["stop"])
    run = store.run(run_id)
    assert run["status"] == "cancelled" and run["error"] == "cancelled by the user"
    assert not store.rows("evals", run_id), "the eval ran to its end despite the cancel"


def test_every_stage_is_measured_and_a_run_that_stops_early_says_why(tmp_path):
    """Base, prompting baseline, random vector, steered and healed each get the axis eval and
    the offline incoherence; the healed round gets its absorption; a ceiling the healed model
    exceeds stops the loop after round 0 of 2, and every reader of the run says so and why."""
    import json
    from dataclasses import replace

    from tests.conftest import run_cli

    db = tmp_path / "runs.db"
    store = Store(db)
    run_id = start_run(store, replace(TINY, rounds=2, tinymfv="off", random_control=True, incoherence_ceiling=1e-6,
                                      seed=11))
    run = run_loop(store, run_id)
    assert run["status"] == "completed" and "after round 0 of 2" in run["stop_reason"]
    assert [r["round"] for r in store.rows("rounds", run_id)] == [0]
    stages = {(r["round"], r["stage"]) for r in store.rows("axis_evals", run_id)}
    assert stages == {(-1, "base"), (-1, "prompted"), (0, "random"), (0, "steered"), (0, "healed")}
    assert {(r["round"], r["stage"]) for r in store.rows("drift_evals", run_id)} == stages
    assert not store.rows("evals", run_id)  # tinymfv off
    drift = {r["stage"]: r for r in store.rows("drift_evals", run_id)}
    assert drift["base"]["headline"] < 1e-3
    # the healed model is scored against the base with its adapter off, not against itself
    assert drift["healed"]["kl_mean"] > 1e-6 and drift["steered"]["headline"] > drift["healed"]["headline"]
    assert all(r["n"] == 2 for r in store.rows("axis_evals", run_id))
    (absorbed,) = store.rows("absorption", run_id)
    assert -1 <= absorbed["cos"] <= 1
    listed = json.loads(run_cli("runs", "--db", db, "--json").stdout)[0]
    assert listed["status"] == "completed (stopped early)" and "round 0 of 2" in listed["stop_reason"]
    assert [q["key"] for q in listed["questions"]] == ["Q0", "Q1", "Q2", "Q3", "prompting", "random"]
    summary = run_cli("summary", str(run_id), "--db", db)
    assert summary.returncode == 0 and "stopped early" in summary.stdout and "Q1 does heal" in summary.stdout
    last = json.loads(run_cli("summary", str(run_id), "--db", db, "--json").stdout.splitlines()[-1])
    assert last["stop_reason"] == run["stop_reason"] and len(last["table"]) == 5
