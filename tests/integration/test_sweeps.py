"""Sweeps on the bundled model: the local backend (the job queue) and the Ray backend on a real
local Ray cluster with two declared GPUs (so GPU-shaped tasks schedule on this CPU machine).
Every run is stored once, with the same rows on both backends; a task whose worker is SIGKILLed
is retried; cancel stops the tasks and keeps finished runs; the main store stays whole."""

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from steerheal.store import Store
from steerheal.sweep_spec import SweepSpec
from steerheal.sweeps import create_sweep, reopen, request_cancel, sweep_runs, sweep_state
from tests.conftest import TINY_INSTRUMENTS
from tests.integration.test_resume_and_export import TABLES, _contents

# One round of everything at its smallest, filters keeping all: ~10-15 s a run on one thread.
TINY = dict(rounds=1, n_completions=4, max_new_tokens=8, think_tokens=1, tinymfv="off", n_contexts=4,
            probe_tokens=4, **TINY_INSTRUMENTS, heal=dict(rank=4, lora_alpha=8, epochs=1),
            filters=dict(max_tail_perplexity=1e9, max_repetition=1.0, reject_narration=False, reject_refusal=False))
GRID = SweepSpec(base=TINY, axes={"agg": ["mean", "rmse"], "seed": [1, 2]}, name="2x2")


def _ray_processes(session: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if session in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
    except ImportError:
        if os.environ.get("STEERHEAL_REQUIRE_RAY") == "1":  # make test / CI install the ray extra
            pytest.fail("Ray is not installed: make test installs it (pip install -e '.[ray]')")
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    session = Path(ray._private.worker._global_node.get_session_dir_path()).name
    yield ray
    ray.shutdown()
    deadline = time.time() + 20
    while _ray_processes(session) and time.time() < deadline:
        time.sleep(0.5)
    assert not _ray_processes(session), "Ray processes outlived the test cluster"


def _integrity(db: Path) -> str:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute("pragma integrity_check").fetchone()[0]


def _task_stage(store: Store, sweep_id: int, run_id: int) -> str | None:
    from steerheal.sweeps_ray import scratch_dir

    db = scratch_dir(store, sweep_id, run_id) / "run.db"
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            row = conn.execute("select stage from runs where id = ?", [run_id]).fetchone()
            return row[0] if row else None
    except sqlite3.Error:
        return None


class Watcher(threading.Thread):
    """Beside the driver: checks the main store's integrity every half second and, when asked,
    does one thing once a task's own store reaches a stage (kill its worker, or cancel)."""

    def __init__(self, store: Store, sweep_id: int, run_id: int, when: str, action):
        super().__init__(daemon=True)
        self.store, self.sweep_id, self.run_id, self.when, self.action = store, sweep_id, run_id, when, action
        self.done, self.checks, self.stop = None, [], threading.Event()

    def run(self):
        while not self.stop.wait(0.2):
            self.checks.append(_integrity(self.store.path))
            stage = _task_stage(self.store, self.sweep_id, self.run_id)
            if self.done is None and stage and stage.startswith(self.when):
                self.done = self.action(stage)


def _kill_worker(store, sweep_id, run_id):
    from steerheal.sweeps_ray import scratch_dir

    def kill(stage):
        pid = int((scratch_dir(store, sweep_id, run_id) / "pid").read_text())
        os.kill(pid, signal.SIGKILL)
        return pid
    return kill


def test_a_2x2_sweep_on_ray_stores_every_run_once_like_the_local_backend_and_survives_a_killed_worker(
        ray_cluster, tmp_path):
    from steerheal import sweeps_local, sweeps_ray

    local = Store(tmp_path / "local" / "runs.db")
    lsid, lruns = create_sweep(local, GRID, "local")
    sweeps_local.drive(local, lsid)
    assert sweep_state(local, lsid)["counts"] == {"completed": 4}

    main = Store(tmp_path / "ray" / "runs.db")
    sid, runs = create_sweep(main, GRID, "ray", max_parallel=2)
    victim = runs[1]
    watcher = Watcher(main, sid, victim, "round 0:", _kill_worker(main, sid, victim))
    watcher.start()
    seen = []
    final = sweeps_ray.drive(main, sid, on_progress=seen.append, max_parallel=2, retries=2)
    watcher.stop.set()
    watcher.join()
    assert watcher.done, "the worker was never killed"
    assert {r["status"] for r in final["runs"]} == {"completed"}
    assert main.run(victim)["attempts"] == 2  # killed once, retried once (resuming from its own store)
    assert set(watcher.checks) == {"ok"} and _integrity(main.path) == "ok" and len(watcher.checks) > 10
    assert any(r["progress"].get("stage") for s in seen for r in s["runs"])  # progress reached the driver
    # each run once, with the rows the local backend wrote for the same point (same seeds)
    assert [r["id"] for r in main.runs()] == runs
    by_point = {str(r["point"]): r["id"] for r in sweep_runs(local, lsid)}
    for run in sweep_runs(main, sid):
        ours, theirs = _contents(main, run["id"]), _contents(local, by_point[str(run["point"])])
        for table in TABLES:
            assert ours[table] == theirs[table], f"run {run['label']}: {table} differs from the local backend"
        assert len(main.rows("completions", run["id"])) == 4
        for art in main.rows("artifacts", run["id"]):
            assert (main.path.parent / art["path"]).exists() and art["path"].startswith("runs_artifacts/run-")
    assert not (main.artifact_root / "sweeps").exists(), "task stores left after their runs were merged"


def test_cancelling_a_ray_sweep_stops_its_task_keeps_finished_runs_and_a_resume_finishes_it(ray_cluster, tmp_path):
    from steerheal import sweeps_ray

    main = Store(tmp_path / "runs.db")
    spec = SweepSpec(base=TINY, axes={"seed": [1, 2]})
    sid, (first, second) = create_sweep(main, spec, "ray", max_parallel=1)
    pids = []

    def cancel(stage):
        pids.append(int((sweeps_ray.scratch_dir(main, sid, second) / "pid").read_text()))
        request_cancel(main, sid)
        return stage

    watcher = Watcher(main, sid, second, "round 0:", cancel)
    watcher.start()
    sweeps_ray.drive(main, sid, max_parallel=1)
    watcher.stop.set()
    watcher.join()
    assert watcher.done and main.run(first)["status"] == "completed" and main.run(second)["status"] == "cancelled"
    kept = _contents(main, first)
    assert main.rows("completions", second) == []  # nothing half-merged
    deadline = time.time() + 15
    while Path(f"/proc/{pids[0]}").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pids[0]}").exists(), "the cancelled task's worker still runs"
    assert _integrity(main.path) == "ok"

    assert reopen(main, sid) == [second]  # resume: the finished run is kept, the cancelled one goes on
    sweeps_ray.drive(main, sid, max_parallel=1)
    assert main.run(second)["status"] == "completed" and _contents(main, first) == kept
    assert main.run(second)["attempts"] == 2  # its second attempt resumed from the task's own store
    assert len(main.runs()) == 2 and _integrity(main.path) == "ok"
