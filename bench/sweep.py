"""Issue 19's overhead measurement: the same 4-run tiny sweep (agg x seed, one round each, on the
bundled model) on the local backend and on the Ray backend, side by side in one process.

    python bench/sweep.py

Prints the Ray cluster's start-up time on its own, then two comparisons:
  a. as a user would run them on this 2-core machine: local (one run at a time, torch on 2 threads)
     against Ray (one task per CPU, two at once, one thread each);
  b. the pure overhead of a Ray task (a fresh worker process, its own model load and store, the
     pack and merge): local on 1 thread against Ray with one task at a time (1 thread).
Each sweep is checked to end with every run completed and stored once.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch  # noqa: E402

from steerheal import sweeps_local, sweeps_ray  # noqa: E402
from steerheal.store import Store  # noqa: E402
from steerheal.sweep_spec import SweepSpec  # noqa: E402
from steerheal.sweeps import create_sweep, sweep_state  # noqa: E402

TINY = dict(rounds=1, n_completions=4, max_new_tokens=8, think_tokens=1, tinymfv="off", n_contexts=4,
            probe_tokens=4, axis_limit=2, drift_prompts=2, drift_tokens=4, absorption_contexts=2,
            heal=dict(rank=4, lora_alpha=8, epochs=1),
            filters=dict(max_tail_perplexity=1e9, max_repetition=1.0, reject_narration=False, reject_refusal=False))
SPEC = SweepSpec(base=TINY, axes={"agg": ["mean", "rmse"], "seed": [1, 2]}, name="bench")


def sweep_once(root: Path, name: str, backend: str, **drive) -> float:
    store = Store(root / name / "runs.db")
    sid, runs = create_sweep(store, SPEC, backend)
    start = time.perf_counter()
    if backend == "ray":
        sweeps_ray.drive(store, sid, **drive)
    else:
        sweeps_local.drive(store, sid)
    took = time.perf_counter() - start
    state = sweep_state(store, sid)
    assert state["counts"] == {"completed": 4}, state
    assert [r["id"] for r in store.runs()] == runs  # each run stored once
    return took


def main() -> None:
    import ray

    root = Path(tempfile.mkdtemp(prefix="steerheal-bench-sweep-"))
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t0
    try:
        print(f"Ray local cluster start-up: {startup:.1f} s (num_cpus=2; not counted below)")
        sweep_once(root, "warm", "local")  # page in the model file and the imports once
        torch.set_num_threads(2)
        local2 = sweep_once(root, "local-2threads", "local")
        ray2 = sweep_once(root, "ray-2-at-once", "ray", max_parallel=2)
        torch.set_num_threads(1)
        local1 = sweep_once(root, "local-1thread", "local")
        ray1 = sweep_once(root, "ray-1-at-once", "ray", max_parallel=1)
    finally:
        ray.shutdown()
    print("4-run tiny sweep (agg mean/rmse x seeds 1, 2; 1 round each), wall seconds:")
    print(f"  a. local, 2 threads            {local2:6.1f}")
    print(f"     Ray, 2 tasks at once        {ray2:6.1f}   ratio Ray/local {ray2 / local2:.2f}")
    print(f"  b. local, 1 thread             {local1:6.1f}")
    print(f"     Ray, 1 task at a time       {ray1:6.1f}   ratio Ray/local {ray1 / local1:.2f} "
          f"(overhead {(ray1 - local1) / 4:.1f} s per run)")


if __name__ == "__main__":
    main()
