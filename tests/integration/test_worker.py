"""A real worker process runs a loop job; killed mid-run, its job and run show as interrupted,
and a new worker resumes the run to the end without duplicating rows."""

import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from peft import PeftModel

from steerheal import jobs
from steerheal.loop import run_loop, start_run
from steerheal.models import load_model
from steerheal.store import Store
from tests.conftest import tiny_run_config

pytestmark = pytest.mark.integration
TINY = tiny_run_config(max_new_tokens=16)


def _worker(db: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "steerheal.cli", "worker", "--db", str(db), "--poll", "0.2", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_worker_leaves_an_interrupted_run_that_a_new_worker_finishes(tmp_path):
    db = tmp_path / "runs.db"
    store = Store(db)
    run_id = start_run(store, replace(TINY, seed=7, random_control=True))
    job_id = jobs.submit(store, "loop", {"run_id": run_id}, run_id=run_id)
    worker = _worker(db)
    try:
        _wait(lambda: store.job(job_id)["status"] == "running", 60, "the worker to claim the job")
        _wait(lambda: store.rows("evals", run_id, -1, stage="base"), 300, "the base eval")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
    assert store.job(job_id)["status"] == "running"  # nobody has noticed yet
    assert store.mark_stale_jobs(timeout=0) == [job_id]
    assert store.job(job_id)["status"] == "interrupted" and store.run(run_id)["status"] == "interrupted"

    store.set_run(run_id, status="running", error=None)
    resume_id = jobs.submit(store, "loop", {"run_id": run_id}, run_id=run_id)
    again = _worker(db, "--once")
    assert again.wait(timeout=900) == 0
    job = store.job(resume_id)
    assert job["status"] == "completed", job["error"]
    assert store.run(run_id)["status"] == "completed"
    stages = sorted((e["round"], e["stage"]) for e in store.rows("evals", run_id))
    assert stages == [(-1, "base"), (-1, "prompted"), (0, "healed"), (0, "random"), (0, "steered")]
    assert len(store.rows("completions", run_id)) == 6
    assert store.rows("train_logs", run_id, 0)
    vector_row = store.rows("vectors", run_id, 0)[0]
    assert len(vector_row["sha256"]) == 64 and vector_row["cos_v0"] == pytest.approx(1.0)
    probes = store.rows("probes", run_id, 0)
    assert probes[0]["prompt"] == "Do you love humanity?" and probes[0]["answer"]
    assert job["progress"].get("stage")  # progress was reported through the store
    PeftModel.from_pretrained(load_model("bundled").model, str(store.artifact(run_id, 0, "adapter")))
    counts = {t: store.db[t].count for t in ("evals", "completions", "probes", "train_logs")}
    run_loop(store, run_id)  # running a finished run again adds nothing
    assert {t: store.db[t].count for t in counts} == counts

    # The Results page's export button is an export job: the worker writes loadable files.
    out = tmp_path / "export"
    export_id = jobs.submit(store, "export", {"run_id": run_id, "round": 0, "out": str(out), "merged": False},
                            run_id=run_id)
    assert _worker(db, "--once").wait(timeout=300) == 0
    job = store.job(export_id)
    assert job["status"] == "completed", job["error"]
    assert job["result"]["adapters"] == ["adapters/round0"]
    assert (out / "adapters" / "round0" / "adapter_model.safetensors").exists()
    assert (out / "vector.safetensors").exists() and (out / "vector.gguf").exists()
