"""The local sweep backend (no Ray): each run is a loop job in the store's queue, so the app's
workers, `steerheal worker` processes and the CLI's own driver all take them, one job per
device at a time. The driver here runs the sweep's jobs in this process until none is left."""

from __future__ import annotations

import threading
from typing import Callable

from steerheal import jobs
from steerheal.store import Store
from steerheal.sweeps import cancel_requested, request_cancel, sweep_runs

Progress = Callable[[dict], None]


def submit_runs(store: Store, sweep_id: int) -> list[int]:
    """A queued loop job for every unfinished run of the sweep that has none in flight."""
    job_ids = []
    for run in sweep_runs(store, sweep_id):
        if run["status"] == "completed":
            continue
        active = [j for j in store.jobs(run_id=run["id"], kind="loop") if j["status"] in ("queued", "running")]
        job_ids += [j["id"] for j in active] or [jobs.submit(store, "loop", {"run_id": run["id"]}, run_id=run["id"])]
    return job_ids


def sweep_jobs(store: Store, sweep_id: int) -> list[dict]:
    """The newest loop job of each of the sweep's runs."""
    out = []
    for run in sweep_runs(store, sweep_id):
        found = store.jobs(run_id=run["id"], kind="loop", limit=1)
        if found:
            out.append(found[0])
    return out


def snapshot(store: Store, sweep_id: int) -> dict:
    """What a progress display shows: each run's status and, while it runs, its stage."""
    stages = {j["run_id"]: j["progress"] for j in sweep_jobs(store, sweep_id) if j["status"] == "running"}
    runs = [dict(id=r["id"], label=r["label"], status=r["status"], stage=r["stage"],
                 progress=stages.get(r["id"], {})) for r in sweep_runs(store, sweep_id)]
    return dict(sweep_id=sweep_id, runs=runs)


def drive(store: Store, sweep_id: int, on_progress: Progress | None = None,
          stop: threading.Event | None = None, poll_seconds: float = 0.5) -> dict:
    """Queue the sweep's unfinished runs and run them here, one at a time, until every one has
    ended (another worker may take some). `stop` (Ctrl-C) or a cancel request cancels the sweep."""
    stop = stop or threading.Event()
    job_ids = submit_runs(store, sweep_id)
    models, name, runner = jobs.ModelCache(), jobs.worker_name(), None

    def stopping() -> bool:
        if stop.is_set() or cancel_requested(store, sweep_id):
            request_cancel(store, sweep_id)
            return True
        return False

    try:
        while True:
            stopping()
            store.mark_stale_jobs(jobs.STALE_AFTER_SECONDS)
            job = store.claim_job(name, only=job_ids)
            if job is not None:
                runner = threading.Thread(target=jobs.run_job, args=(store, job, models), daemon=True)
                runner.start()
                while runner.is_alive():
                    if on_progress:
                        on_progress(snapshot(store, sweep_id))
                    stopping()
                    runner.join(poll_seconds)
                continue
            open_jobs = [j for j in (store.job(i) for i in job_ids) if j["status"] in ("queued", "running")]
            if on_progress:
                on_progress(snapshot(store, sweep_id))
            if not open_jobs:
                return snapshot(store, sweep_id)
            stop.wait(poll_seconds)  # another worker holds the device, or has claimed a job of ours
    except KeyboardInterrupt:  # Ctrl-C: cancel, and let the run in hand stop at its next check
        request_cancel(store, sweep_id)
        if runner is not None:
            runner.join(60)
        raise
