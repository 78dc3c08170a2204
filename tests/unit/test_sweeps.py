"""Sweep specs, the sweep store, the merge of a task's store and the comparison over seeds (no
model: these are storage and bookkeeping; the runs themselves are tested on the bundled model
in tests/integration/test_sweeps.py)."""

import json
import socket
import sqlite3
import sys

import pytest

from steerheal.errors import SteerhealError
from steerheal.stats import seed_interval
from steerheal.store import Store
from steerheal.sweep_compare import outcome, table_text, versus_first, versus_text
from steerheal.sweep_presets import preset
from steerheal.sweep_spec import SweepSpec, setting_path
from steerheal.sweeps import create_sweep, merge_run, pack_run, reopen, request_cancel, sweep, sweep_runs, sweeps
from tests.conftest import run_cli

TOML = """
name = "aggregates"
[base]
rounds = 2
tau = 0.5
[base.heal]
lam = 0.2
[axes]
agg = ["mean", "rmse"]
seed = [1, 2, 3]
"""


def test_a_grid_expands_to_every_combination_with_heal_names_and_dotted_paths_put_in_place():
    import tomllib

    spec = SweepSpec.from_dict(tomllib.loads(TOML))
    runs = spec.expand()
    assert len(runs) == 6 and spec.size() == 6
    points = [p for p, _ in runs]
    assert points[0] == {"agg": "mean", "seed": 1} and points[-1] == {"agg": "rmse", "seed": 3}
    cfg = runs[4][1]
    assert (cfg.heal.agg, cfg.seed, cfg.rounds, cfg.heal.tau, cfg.heal.lam) == ("rmse", 2, 2, 0.5, 0.2)
    listed = SweepSpec(axes={}, combinations=({"filters.max_repetition": 0.5, "rounds": 1},
                                              {"backtrack.threshold": 2.0}))
    (p1, c1), (p2, c2) = listed.expand()
    assert c1.filters.max_repetition == 0.5 and c1.rounds == 1 and c2.backtrack.threshold == 2.0
    assert setting_path("heal.seed") == ("heal", "seed") and setting_path("seed") == ("seed",)


@pytest.mark.parametrize("spec, message", [
    (SweepSpec(axes={"bogus": [1, 2]}), "Unknown setting 'bogus'"),
    (SweepSpec(axes={"seed": []}), "axis 'seed' is an empty list"),
    (SweepSpec(), "The sweep has no runs"),
    (SweepSpec(axes={"seed": list(range(40)), "rounds": list(range(1, 27))}), "1040 runs (over 1000): pass --yes"),
    (SweepSpec(axes={"agg": ["mean", "median"]}), "Run agg=median: Unknown KL aggregate"),
    (SweepSpec(base={"curation": "manual"}, axes={"seed": [1]}), "cannot wait for hand curation"),
])
def test_bad_specs_are_refused_naming_what_to_change(spec, message):
    with pytest.raises(SteerhealError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec.expand()


def test_over_1000_runs_go_with_yes():
    spec = SweepSpec(axes={"seed": list(range(1001))})
    assert len(spec.expand(yes=True)) == 1001


def test_the_seed_table_preset_varies_the_aggregate_at_one_tau_lambda_and_reference_over_three_seeds():
    runs = preset("seed-table").expand()
    assert [p for p, _ in runs] == [{"agg": a, "seed": s} for a in ("mean", "rmse") for s in (1, 2, 3)]
    assert len({(c.heal.tau, c.heal.lam, c.heal.ref, c.rounds) for _, c in runs}) == 1
    assert {c.model for _, c in runs} == {"bundled"}
    # tau scaled to the bundled model's measured KL (at the seed's 1.0 the barrier never fired on it)
    assert {c.heal.tau for _, c in runs} == {0.05}


def test_a_sweep_stores_its_runs_with_ids_before_anything_starts_and_lists_them(tmp_path):
    store = Store(tmp_path / "runs.db")
    sweep_id, run_ids = create_sweep(store, SweepSpec(axes={"seed": [1, 2]}, name="two seeds"), "local")
    assert run_ids == [1, 2] and sweep(store, sweep_id)["state"] == dict(status="queued", total=2,
                                                                          counts={"queued": 2})
    runs = sweep_runs(store, sweep_id)
    assert [(r["seed"], r["point"], r["label"], r["sweep_id"]) for r in runs] == [
        (1, {"seed": 1}, "seed=1", 1), (2, {"seed": 2}, "seed=2", 1)]
    request_cancel(store, sweep_id)
    assert {r["status"] for r in sweep_runs(store, sweep_id)} == {"cancelled"}
    assert reopen(store, sweep_id) == [1, 2] and sweep(store, sweep_id)["cancel_requested"] == 0
    res = run_cli("sweeps", "--db", tmp_path / "runs.db", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)[0]["counts"] == {"queued": 2}
    res = run_cli("runs", "--db", tmp_path / "runs.db", "--json")
    assert [r["sweep_id"] for r in json.loads(res.stdout)] == [1, 1]


def test_a_bad_spec_stores_nothing(tmp_path):
    store = Store(tmp_path / "runs.db")
    with pytest.raises(SteerhealError):
        create_sweep(store, SweepSpec(axes={"seed": [1, -1]}), "local")
    assert sweeps(store) == [] and store.runs() == []


def _task_store(tmp_path, run_id: int) -> Store:
    """A task's own store holding one run with a round of rows and an artefact (as the loop writes them)."""
    task = Store(tmp_path / "task" / "run.db")
    with task.db.conn:
        task.db["runs"].insert(dict(id=run_id, status="completed", stage="done", config="{}", versions="{}",
                                    model_id="m", seed=1, kind="loop"))
    task.put("rounds", [dict(run_id=run_id, round=0, status="completed")])
    task.put("completions", [dict(run_id=run_id, round=0, idx=i, prompt="p", alpha=2.0, text=f"t{i}")
                             for i in range(3)])
    path = task.save_artifact(run_id, 0, "vector.safetensors", lambda tmp: tmp.write_bytes(b"v"))
    task.put("vectors", [dict(run_id=run_id, round=0, path=str(path), sha256="x", norms="[]", cos_v0=1.0)])
    return task


def test_merging_a_task_run_twice_stores_it_once_with_its_artefacts_under_the_main_folder(tmp_path):
    store = Store(tmp_path / "main" / "runs.db")
    _, (run_id,) = create_sweep(store, SweepSpec(axes={"seed": [1]}), "ray")
    packed = pack_run(_task_store(tmp_path, run_id), run_id)
    merge_run(store, packed)
    merge_run(store, packed)  # a retried task, or a merge repeated after a crash
    assert len(store.rows("completions", run_id)) == 3 and len(store.rows("artifacts", run_id)) == 1
    art = store.artifact(run_id, 0, "vector.safetensors")
    assert art is not None and art.read_bytes() == b"v" and str(art).startswith(str(store.artifact_root))
    assert store.rows("vectors", run_id)[0]["path"] == str(art)
    assert store.run(run_id)["status"] == "completed"
    assert not [p for p in store.artifact_root.iterdir() if p.name.startswith(".")]  # no temporary folders left
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    with pytest.raises(SteerhealError, match="No run 99"):
        merge_run(store, {**packed, "run_id": 99})


def test_intervals_over_seeds_are_t_intervals_and_outcomes_need_two_seeds():
    iv = seed_interval([1.0, 2.0, 3.0])
    assert iv.value == 2.0 and iv.low == pytest.approx(2 - 4.303 / 3 ** 0.5) and iv.n == 3
    assert seed_interval([5.0]).low == 5.0
    assert outcome(seed_interval([1.0, 1.1, 0.9]), seed_interval([0.5, 0.6, 0.4]), 1, 3) == (
        "stopped early in 1 of 3 seeds; trait moves up; incoherence rises")
    assert "one seed: no interval; trait change not distinguishable" in outcome(
        seed_interval([1.0]), seed_interval([1.0]), 0, 1)
    row = dict(label="agg=mean", n_done=3, n_runs=3, trait_start=iv.to_dict(), trait_end=iv.to_dict(),
               incoherence_start=iv.to_dict(), incoherence_end=iv.to_dict(), incoherence_max=iv.to_dict(),
               outcome="x")
    assert "| agg=mean | 3/3 | +2.000 [-0.484, +4.484] -> " in table_text(dict(settings=[row]))


def test_settings_are_compared_with_the_first_paired_by_the_seeds_both_finished():
    def run(seed, trait, incoherence, status="completed"):
        return dict(seed=seed, status=status, trait_end=trait, incoherence_end=incoherence)

    rows = [dict(label="agg=mean", runs=[run(1, 0.5, 0.30), run(2, 0.7, 0.50), run(3, 0.6, 0.40)]),
            dict(label="agg=rmse", runs=[run(1, 0.5, 0.20), run(2, 0.7, 0.41), run(3, 0.9, 0.90, "failed")])]
    (vs,) = versus_first(rows)
    assert vs["seeds"] == [1, 2] and vs["against"] == "agg=mean"  # seed 3 did not finish under rmse
    assert vs["incoherence_end"]["value"] == pytest.approx(-0.095) and vs["incoherence_end"]["n"] == 2
    assert vs["trait_end"]["value"] == pytest.approx(0.0)
    text = versus_text(vs)
    assert text.startswith("agg=rmse minus agg=mean, paired over seeds 1, 2:") and "incoherence at the end -0.095" in text
    assert versus_first(rows[:1]) == []


def test_the_sweep_command_refuses_bad_input_with_exit_2_and_stores_nothing(tmp_path, monkeypatch):
    db = tmp_path / "runs.db"
    (tmp_path / "bad.toml").write_text("[axes]\nseed = 3\n")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    cases = [
        (["--axis", "bogus=1,2"], "Unknown setting 'bogus'"),
        (["--axis", "seed="], "axis 'seed' is an empty list"),
        (["--set", "rounds=2"], "The sweep varies nothing"),
        (["--axis", f"seed={','.join(map(str, range(1001)))}"], "pass --yes"),
        (["--config", tmp_path / "bad.toml"], "axis 'seed' must be a list"),
        (["--config", tmp_path / "missing.toml"], "does not exist"),
        (["--preset", "nope"], "Unknown sweep preset 'nope'"),
        (["--axis", "seed=1", "--max-parallel", "0"], "--max-parallel must be at least 1"),
    ]
    for args, message in cases:
        res = run_cli("sweep", "--db", db, *args)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    res = run_cli("sweep", "--db", db, "--axis", "seed=1,2", "--backend", "ray")
    if "ray" in sys.modules or _ray_installed():
        assert res.returncode == 2 and f"Cannot reach the Ray cluster at '127.0.0.1:{port}'" in res.stderr, res.stderr
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    res = run_cli("sweep", "--db", db, "--axis", "seed=1,2", "--backend", "ray")
    assert res.returncode == 2 and "pip install 'steerheal[ray]'" in res.stderr, res.stderr
    assert not db.exists() or (sweeps(Store(db)) == [] and Store(db).runs() == [])


def _ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def test_the_app_and_the_local_backend_need_no_ray(tmp_path):
    """With Ray absent (blocked in a fresh interpreter), the app's modules import and a local sweep
    is queued for the workers."""
    import subprocess

    code = ("import sys; sys.modules['ray'] = None\n"
            "import app, pages.sweeps, steerheal.sweeps_local\n"
            "from steerheal.cli import main\n"
            f"sys.exit(main(['sweep', '--db', {str(tmp_path / 'runs.db')!r}, '--axis', 'seed=1,2', '--no-wait']))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=__import__("pathlib").Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "queued: the app's workers" in res.stdout
    store = Store(tmp_path / "runs.db")
    assert [j["status"] for j in store.jobs(kind="loop")] == ["queued", "queued"]
