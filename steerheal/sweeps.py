"""Sweeps in the store: a sweep row groups runs created together (ids assigned before anything
starts), each with the point of the grid it runs. Shared by both backends, the CLI and the app.

A run's own rows are written by the loop; on the Ray backend a task writes them into its own
SQLite file and `merge_run` copies them into the main store in one transaction, keyed by run id,
so a retried or re-merged run is stored once.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

from steerheal.errors import SteerhealError
from steerheal.faults import crash_point
from steerheal.run_config import RunConfig
from steerheal.store import SCHEMA, Store, git_commit, library_versions
from steerheal.sweep_spec import SweepSpec, label

BACKENDS = ("local", "ray")
# A run's rows in every table keyed by run: what a merge copies from a task's store.
RUN_TABLES = ("rounds", "vectors", "completions", "evals", "axis_evals", "drift_evals", "absorption",
              "calibrations", "probes", "train_logs", "artifacts")
FINISHED = ("completed", "failed", "cancelled")


def create_sweep(store: Store, spec: SweepSpec, backend: str, yes: bool = False, max_parallel: int | None = None,
                 preset: str | None = None) -> tuple[int, list[int]]:
    """Validate every run, then store the sweep and all its runs (status queued) in one
    transaction: a bad spec stores nothing."""
    if backend not in BACKENDS:
        raise SteerhealError(f"Unknown backend {backend!r}: use local or ray.")
    if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
        raise SteerhealError(f"--max-parallel must be a positive integer, got {max_parallel!r}.")
    planned = spec.expand(yes=yes)
    now, versions, commit = time.time(), json.dumps(library_versions()), git_commit()
    with store.db.conn:
        sweep_id = int(store.db["sweeps"].insert(dict(
            created=now, updated=now, name=spec.name, spec=json.dumps(spec.to_dict()), backend=backend,
            status="queued", max_parallel=max_parallel, cancel_requested=0, error=None, preset=preset)).last_pk)
        run_ids = []
        for point, cfg in planned:
            row = dict(created=now, updated=now, status="queued", model_id=cfg.model, kind="loop", seed=cfg.seed,
                       config=json.dumps(cfg.to_dict()), versions=versions, git_commit=commit, error=None,
                       stage="queued", sweep_id=sweep_id, sweep_point=json.dumps(point))
            run_ids.append(int(store.db["runs"].insert(row).last_pk))
    return sweep_id, run_ids


def sweep(store: Store, sweep_id: int) -> dict:
    rows = list(store.db["sweeps"].rows_where("id = ?", [sweep_id]))
    if not rows:
        raise SteerhealError(f"No sweep {sweep_id} in {store.path}: `steerheal sweeps` lists them.")
    row = rows[0]
    return {**row, "spec": json.loads(row["spec"]), "state": sweep_state(store, sweep_id)}


def sweeps(store: Store) -> list[dict]:
    return [sweep(store, r["id"]) for r in store.db["sweeps"].rows_where(order_by="id", select="id")]


def sweep_runs(store: Store, sweep_id: int) -> list[dict]:
    """The sweep's runs in creation order, each with its point ({axis: value}) and label."""
    ids = [r["id"] for r in store.db["runs"].rows_where("sweep_id = ?", [sweep_id], order_by="id", select="id")]
    out = []
    for run_id in ids:
        run = store.run(run_id)
        point = json.loads(run.get("sweep_point") or "{}")
        out.append({**run, "point": point, "label": label(point)})
    return out


def sweep_state(store: Store, sweep_id: int) -> dict:
    """How many of the sweep's runs are in each status, and the sweep's status in one word."""
    counts: dict[str, int] = {}
    for r in store.db["runs"].rows_where("sweep_id = ?", [sweep_id], select="status"):
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    total = sum(counts.values())
    if counts.get("completed", 0) == total and total:
        word = "completed"
    elif counts.get("running", 0) or counts.get("waiting", 0):
        word = "running"
    elif counts.get("queued", 0):
        word = "queued"
    elif counts.get("cancelled", 0):
        word = "cancelled"
    elif counts.get("failed", 0):
        word = "failed"
    else:
        word = "interrupted"
    return dict(status=word, total=total, counts=counts)


def change_marker(store: Store, sweep_id: int) -> tuple:
    """Changes whenever a run of the sweep changes state or stores an instrument's result: a view
    redraws only then."""
    runs = store.db.execute("select count(*), max(updated), group_concat(status) from runs where sweep_id = ?",
                            [sweep_id]).fetchone()
    rows = tuple(store.db.execute(f"select count(*) from [{t}] where run_id in (select id from runs where "
                                  "sweep_id = ?)", [sweep_id]).fetchone()[0] for t in ("axis_evals", "drift_evals"))
    return (sweep_id, *runs, *rows)


def request_cancel(store: Store, sweep_id: int) -> None:
    """Stop the sweep: queued runs are cancelled at once; running ones stop at their next check
    (local jobs) or are killed by the Ray driver. Finished runs are kept."""
    sweep(store, sweep_id)
    with store.db.conn:
        store.db["sweeps"].update(sweep_id, {"cancel_requested": 1, "updated": time.time()})
        store.db.execute("update runs set status = 'cancelled', error = 'cancelled by the user', stage = 'cancelled before it "
                         "started', updated = ? "
                         "where sweep_id = ? and status = 'queued'", [time.time(), sweep_id])
    for run in sweep_runs(store, sweep_id):
        for job in store.jobs(run_id=run["id"], kind="loop"):
            if job["status"] in ("queued", "running"):
                store.request_cancel(job["id"])


def cancel_requested(store: Store, sweep_id: int) -> bool:
    return bool(store.db["sweeps"].get(sweep_id)["cancel_requested"])


def reopen(store: Store, sweep_id: int) -> list[int]:
    """Resume: the runs that did not complete go back to the queue (each resumes from its last
    stored stage); finished ones are kept. Returns the runs to do."""
    todo = [r["id"] for r in sweep_runs(store, sweep_id) if r["status"] != "completed"]
    with store.db.conn:
        store.db["sweeps"].update(sweep_id, {"cancel_requested": 0, "updated": time.time(), "error": None})
        for run_id in todo:
            store.db["runs"].update(run_id, {"status": "queued", "error": None, "updated": time.time()})
    return todo


def set_status(store: Store, sweep_id: int, status: str, error: str | None = None) -> None:
    with store.db.conn:
        store.db["sweeps"].update(sweep_id, {"status": status, "error": error, "updated": time.time()})


# merging a task's store ------------------------------------------------
def pack_run(task_store: Store, run_id: int) -> dict:
    """A finished task's run as bytes: its SQLite file (a consistent snapshot) and its artefacts
    (a tar), so the driver can merge it from any node."""
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "run.db"
        dest = sqlite3.connect(snapshot)
        task_store.db.conn.backup(dest)
        dest.close()
        tar_path = Path(tmp) / "artifacts.tar"
        with tarfile.open(tar_path, "w") as tar:
            folder = task_store.artifact_dir(run_id)
            if folder.exists():
                tar.add(folder, arcname=".")
        return dict(run_id=run_id, db=snapshot.read_bytes(), artifacts=tar_path.read_bytes(),
                    root=str(task_store.path.parent))


def merge_run(store: Store, packed: dict) -> None:
    """Copy one task's run into the main store: artefacts under the main data folder, then every
    row of the run in one transaction that first deletes what an earlier merge stored."""
    run_id = int(packed["run_id"])
    store.run(run_id)  # the run was created by the sweep: refuse a stranger
    root = store.artifact_root
    root.mkdir(parents=True, exist_ok=True)
    incoming = root / f".merge-run-{run_id}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        db_path = Path(tmp) / "task.db"
        db_path.write_bytes(packed["db"])
        tar_path = Path(tmp) / "artifacts.tar"
        tar_path.write_bytes(packed["artifacts"])
        with tarfile.open(tar_path) as tar:
            tar.extractall(incoming, filter="data")
        with sqlite3.connect(db_path) as conn:
            conn.row_factory = sqlite3.Row
            run_row = dict(conn.execute("select * from runs where id = ?", [run_id]).fetchone() or {})
            rows = {t: [dict(r) for r in conn.execute(f"select * from [{t}] where run_id = ? order by rowid",
                                                      [run_id])] for t in RUN_TABLES}
        conn.close()
    if not run_row:
        shutil.rmtree(incoming, ignore_errors=True)
        raise SteerhealError(f"The task's store holds no run {run_id}: nothing merged.")
    final = store.artifact_dir(run_id)
    old = root / f".old-run-{run_id}-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.replace(final, old)
    os.replace(incoming, final)
    main_rel = final.relative_to(store.path.parent)
    for r in rows["artifacts"]:  # relative to the task's DB folder there, to the main DB's here
        r["path"] = str(main_rel / _inside_run(r["path"], run_id))
    for r in rows["vectors"]:
        r["path"] = str(final / _inside_run(r["path"], run_id))
    keep = {k: run_row.get(k) for k in ("status", "stage", "error", "stop_reason", "model_id", "versions",
                                        "git_commit")}
    with store.db.conn:
        for table in RUN_TABLES:
            store.db.execute(f"delete from [{table}] where run_id = ?", [run_id])
            pk = SCHEMA[table]["pk"]
            fresh = [{k: v for k, v in r.items() if not (pk == "id" and k == "id")} for r in rows[table]]
            if fresh:
                store.db[table].insert_all(fresh)
        crash_point("sweep:merge")  # inside the transaction: a kill here must leave the old rows
        store.db["runs"].update(run_id, {**keep, "updated": time.time()})
    shutil.rmtree(old, ignore_errors=True)


def _inside_run(path: str, run_id: int) -> Path:
    """A task's artefact path from inside its run folder: '.../run-7/round-0/adapter-ab12' -> 'round-0/adapter-ab12'."""
    parts = Path(path).parts
    return Path(*parts[len(parts) - parts[::-1].index(f"run-{run_id}"):])


def run_config(store: Store, run_id: int) -> RunConfig:
    return RunConfig.from_dict(store.run(run_id)["config"])
