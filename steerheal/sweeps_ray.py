"""The Ray sweep backend (`pip install 'steerheal[ray]'`; imported only when used).

Each run is a Ray task in a fresh worker process, asking for one GPU when the cluster has GPUs
(one CPU slot otherwise). A task runs the loop against its own SQLite file (the store's schema,
artefacts beside it) in a scratch folder, and returns the run as bytes; the driver, the one
writer of the main store, merges it (`sweeps.merge_run`). A worker that dies is retried up to
`retries` times, and the retry resumes from the task's own store when its scratch folder
survived (always on one machine). Progress comes back through a small actor the tasks post to
without waiting; the driver drains it between waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from steerheal.errors import SteerhealError
from steerheal.store import Store
from steerheal.sweeps import cancel_requested, merge_run, pack_run, request_cancel, sweep_runs

INSTALL_HINT = "pip install 'steerheal[ray]' (or pip install ray)"
SCRATCH_ENV = "STEERHEAL_SWEEP_SCRATCH"
Progress = Callable[[dict], None]


def import_ray():
    try:
        import ray
    except ImportError:
        raise SteerhealError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}; or use "
                             "--backend local (the default).") from None
    return ray


def _reachable(address: str, timeout: float = 3.0) -> None:
    """A RAY_ADDRESS naming host:port (or ray://host:port) must answer before ray.init, which
    would otherwise retry for a minute."""
    if address in ("local", "auto"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise SteerhealError(f"RAY_ADDRESS {address!r} is not host:port or ray://host:port: fix it, or unset it to "
                             "start a local Ray cluster.")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=timeout).close()
    except OSError as err:
        raise SteerhealError(f"Cannot reach the Ray cluster at {address!r} ({err}): start it (`ray start --head`), "
                             "fix RAY_ADDRESS, or unset it to start a local cluster.") from None


def connect(address: str | None = None, **init_kwargs) -> tuple[object, bool, float]:
    """(ray, whether this call started it, seconds taken). Call from the main thread: a local
    cluster started from a thread that exits dies with it."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False, 0.0
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    _reachable(address)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster needs no token (Ray 2.60 asks for one)
    start = time.perf_counter()
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **init_kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SteerhealError(f"Cannot start or join the Ray cluster at {address!r}: {err}") from None
    return ray, True, time.perf_counter() - start


class _Board:
    """Progress events posted by tasks, taken by the driver."""

    def __init__(self) -> None:
        self.events: list[tuple[int, dict]] = []

    def put(self, run_id: int, event: dict) -> None:
        self.events.append((run_id, event))

    def drain(self) -> list[tuple[int, dict]]:
        out, self.events = self.events, []
        return out


def scratch_dir(store: Store, sweep_id: int, run_id: int) -> Path:
    """Where a task keeps its own store: beside the main store, or under STEERHEAL_SWEEP_SCRATCH
    (a node-local disk on a cluster whose nodes do not share the main data folder)."""
    root = os.environ.get(SCRATCH_ENV)
    if root:
        tag = hashlib.sha256(str(store.path).encode()).hexdigest()[:8]
        return Path(root) / f"steerheal-{tag}" / f"sweep-{sweep_id}" / f"run-{run_id}"
    return store.artifact_root / "sweeps" / f"sweep-{sweep_id}" / f"run-{run_id}"


def run_task(run_row: dict, scratch: str, board) -> dict:
    """One run inside a Ray worker: the loop against the task's own store, packed as bytes.
    A run that fails comes back too (its rows say how far it got and why)."""
    import torch

    from steerheal.loop import run_loop

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    folder = Path(scratch)
    folder.mkdir(parents=True, exist_ok=True)
    counter = folder / "attempts"
    attempt = int(counter.read_text() or 0) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    (folder / "pid").write_text(str(os.getpid()))
    store = Store(folder / "run.db")
    run_id = int(run_row["id"])
    if not list(store.db["runs"].rows_where("id = ?", [run_id])):
        with store.db.conn:
            store.db["runs"].insert({**run_row, "status": "running", "stage": "created"})

    def post(stage: str, info: dict) -> None:
        board.put.remote(run_id, dict(stage=stage, done=info.get("step"), total=info.get("of"),
                                      round=info.get("round")))

    board.put.remote(run_id, dict(stage="started", attempt=attempt))
    try:
        run_loop(store, run_id, post)
    except Exception:  # stored as failed in the task's store; merged so the main store says why
        pass
    return pack_run(store, run_id)


def _stage_text(event: dict) -> str:
    step = f" {event['done']}/{event['total']}" if event.get("done") is not None and event.get("total") else ""
    where = f"round {event['round']}: " if event.get("round") is not None else ""
    return f"{where}{event['stage']}{step}"


def snapshot(store: Store, sweep_id: int, progress: dict[int, dict]) -> dict:
    runs = [dict(id=r["id"], label=r["label"], status=r["status"], stage=r["stage"],
                 progress=progress.get(r["id"], {}) if r["status"] == "running" else {})
            for r in sweep_runs(store, sweep_id)]
    return dict(sweep_id=sweep_id, runs=runs)


def drive(store: Store, sweep_id: int, on_progress: Progress | None = None, stop: threading.Event | None = None,
          max_parallel: int | None = None, retries: int = 2, address: str | None = None,
          init_kwargs: dict | None = None, on_connected: Callable[[float], None] | None = None) -> dict:
    """Run the sweep's unfinished runs as Ray tasks and merge each as it returns. `stop` (Ctrl-C)
    or a cancel request force-cancels the tasks in flight (their runs say cancelled, finished
    runs are kept). Shuts down a cluster it started."""
    ray, started, seconds = connect(address, **(init_kwargs or {}))
    if on_connected:
        on_connected(seconds)
    stop = stop or threading.Event()
    board = None
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        shape = dict(num_gpus=1, num_cpus=1) if gpus else dict(num_cpus=1)
        slots = max(1, min(gpus or cpus, max_parallel or (gpus or cpus)))
        board = ray.remote(num_cpus=0)(_Board).remote()
        task = ray.remote(max_calls=1)(run_task).options(max_retries=retries, retry_exceptions=False, **shape)
        todo = [r for r in sweep_runs(store, sweep_id) if r["status"] != "completed"]
        pending: dict = {}
        progress: dict[int, dict] = {}

        def cancel_all() -> None:
            for ref in pending:
                ray.cancel(ref, force=True)
            for run_id in pending.values():
                store.set_run(run_id, status="cancelled", error="cancelled by the user")
            pending.clear()
            request_cancel(store, sweep_id)
            todo.clear()

        try:
            while todo or pending:
                if stop.is_set() or cancel_requested(store, sweep_id):
                    cancel_all()
                    break
                while todo and len(pending) < slots:
                    run = todo.pop(0)
                    row = {k: run[k] for k in ("id", "created", "model_id", "seed", "kind", "git_commit",
                                                "sweep_id", "sweep_point")}
                    row.update(config=_json(run["config"]), versions=_json(run["versions"]), updated=time.time())
                    scratch = scratch_dir(store, sweep_id, run["id"])
                    pending[task.remote(row, str(scratch), board)] = run["id"]
                    store.set_run(run["id"], status="running", stage="started on Ray", error=None)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for run_id, event in ray.get(board.drain.remote()):
                    if run_id in pending.values():
                        if event.get("attempt"):  # a retry after its worker died shows here
                            store.set_run(run_id, attempts=event["attempt"])
                        if _stage_text(event) != _stage_text(progress.get(run_id, {"stage": ""})):
                            store.set_run(run_id, stage=_stage_text(event))  # the app reads it from here
                        progress[run_id] = event
                for ref in ready:
                    run_id = pending.pop(ref)
                    try:
                        merge_run(store, ray.get(ref))
                        if store.run(run_id)["status"] == "completed":
                            _remove_scratch(scratch_dir(store, sweep_id, run_id))
                    except SteerhealError:
                        raise
                    except Exception as err:  # retries ran out (a worker died each time), or the task broke
                        store.set_run(run_id, status="failed", error=f"{type(err).__name__}: {str(err)[:500]}")
                    progress.pop(run_id, None)
                if on_progress:
                    on_progress(snapshot(store, sweep_id, progress))
        except KeyboardInterrupt:
            cancel_all()
            raise
        return snapshot(store, sweep_id, progress)
    finally:
        if board is not None:
            ray.kill(board)
        if started:
            ray.shutdown()


def _remove_scratch(folder: Path) -> None:
    """A merged run's task store goes; so do the sweep's folders once empty."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in (folder.parent, folder.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            break


def _json(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)
