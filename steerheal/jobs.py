"""Background jobs: a queue in the store, run by worker processes apart from the UI.

The UI (or the CLI) submits a job row; a worker claims it atomically, runs it, and reports
progress, a heartbeat and the result through the store. A cancel request is a flag on the
row that the job sees at its next check. A worker that dies stops heartbeating, and
`Store.mark_stale_jobs` marks its job (and run) interrupted; resuming a loop job re-runs the
loop, which continues from its last stored stage.

Job kinds and their params:
    vector    {model, pos, neg, contexts}            -> {path, norms, residual_norms}
    generate  {model, vector, prompts, alphas, n, layers, max_new_tokens, seed, filters}
                                                      -> {batch_id, n}  (completions stored as batch run)
    loop      {run_id}                                -> {status}
    export    {run_id, round, out, merged}            -> the export manifest
    dose      {model, vector, layers, alphas, target, n_prompts, max_new_tokens, axis_items,
               drift_prompts, pair, items}
                                                      -> {points, and with a target: alpha, measure,
                                                          evaluations, reached}; the points so far are
                                                          in the job's progress while it runs
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from typing import Callable

from steerheal.errors import SteerhealError
from steerheal.store import Store

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 2.0
STALE_AFTER_SECONDS = 20.0
JOB_KINDS = ("vector", "generate", "loop", "export", "dose")


class Cancelled(InterruptedError):
    """The person pressed cancel."""


class JobContext:
    """What a running job sees: progress reporting and the cancel flag."""

    def __init__(self, store: Store, job_id: int):
        self.store, self.job_id = store, job_id
        self.cancelled = threading.Event()

    def progress(self, stage: str, done: int | None = None, total: int | None = None, **info) -> None:
        self.store.update_job(self.job_id, progress=dict(stage=stage, done=done, total=total, **info))

    def should_stop(self) -> bool:
        return self.cancelled.is_set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("cancelled")


def submit(store: Store, kind: str, params: dict, run_id: int | None = None) -> int:
    """Queue a job for the workers. Its device is params["device"] when given (e.g. "cuda:1"),
    else this machine's default accelerator; one job runs per device at a time."""
    if kind not in JOB_KINDS:
        raise SteerhealError(f"Unknown job kind {kind!r}: use one of {', '.join(JOB_KINDS)}.")
    device = params.get("device") if isinstance(params.get("device"), str) else None
    return store.submit_job(kind, params, run_id, device=None if device in (None, "auto") else device)


class ModelCache:
    """The worker keeps the last plain (unadapted) model it loaded, so preview jobs do not reload."""

    def __init__(self) -> None:
        self._name: tuple[str, bool] | None = None
        self._lm = None

    def get(self, name: str, load_in_4bit: bool = False):
        from steerheal.config import ModelSpec
        from steerheal.models import load_model

        key = (name, bool(load_in_4bit))
        if self._name != key:
            self._lm, self._name = None, None
            self._lm, self._name = load_model(ModelSpec(name=name, load_in_4bit=bool(load_in_4bit))), key
        return self._lm


def _job_vector(store: Store, params: dict, ctx: JobContext, models: ModelCache) -> dict:
    from steerheal.config import PersonaPair
    from steerheal.presets import default_contexts
    from steerheal.vectors import extract_vector

    pair = PersonaPair(pos=params["pos"], neg=params["neg"], name=params.get("name", "custom")).validate()
    contexts = params.get("contexts") or default_contexts()
    ctx.progress("loading model")
    lm = models.get(params.get("model", "bundled"), params.get("load_in_4bit", False))
    ctx.progress("extracting", 0, 2 * len(contexts))

    def step(done: int, total: int) -> None:
        ctx.progress("extracting", done, total)
        ctx.check()

    vector = extract_vector(lm, pair, contexts, progress=step)
    path = store.lab_dir() / f"vector-job{ctx.job_id}.safetensors"
    vector.save(path)
    return dict(path=str(path), norms=vector.norms, residual_norms=vector.meta["residual_norms"],
                n_layers=vector.n_layers, model_id=lm.model_id)


def _job_generate(store: Store, params: dict, ctx: JobContext, models: ModelCache) -> dict:
    from steerheal.config import GenerationConfig, SteerConfig
    from steerheal.filters import FilterConfig, evaluate_completions
    from steerheal.generate import generate
    from steerheal.presets import axis_prompts
    from steerheal.vectors import SteeringVector

    vector = SteeringVector.load(params["vector"])
    lm = models.get(params.get("model", "bundled"), params.get("load_in_4bit", False))
    alphas = [float(a) for a in params["alphas"]]
    n = int(params["n"])
    if n < 1:
        raise SteerhealError("Generate at least one completion.")
    prompts = params.get("prompts") or axis_prompts()
    gen = GenerationConfig(max_new_tokens=int(params.get("max_new_tokens", 64)), seed=int(params.get("seed", 0)))
    gen.validate()
    filters = FilterConfig(**params.get("filters", {})).validate()
    batch_id = store.create_run(dict(kind="batch", **params), lm.model_id, gen.seed, kind="batch", status="running")
    store.update_job(ctx.job_id, run_id=batch_id)
    jobs = [(prompts[i % len(prompts)], alphas[i % len(alphas)]) for i in range(n)]
    rows, done = [], 0
    for alpha in alphas:
        mine = [(k, p) for k, (p, a) in enumerate(jobs) if a == alpha]
        if not mine:
            continue
        ctx.progress(f"generating at alpha {alpha:g}", done, n)
        sc = SteerConfig(alpha=alpha, layers=params.get("layers", "0.45-0.55"))
        comps = generate(lm, [p for _, p in mine], gen, vector, sc)
        ctx.check()
        ctx.progress(f"filtering alpha {alpha:g}", done, n)
        verdicts = evaluate_completions(lm, [c.prompt for c in comps], [c.token_ids for c in comps],
                                        [c.text for c in comps], gen.system_prompt, filters, vector, [sc] * len(comps))
        for (k, _), c, v in zip(mine, comps, verdicts):
            rows.append(dict(run_id=batch_id, round=0, idx=k, prompt=c.prompt, alpha=alpha, text=c.text,
                             n_tokens=c.n_tokens, scores={"checks": v.to_dict()["checks"], "kl": v.kl,
                                                          "token_ids": c.token_ids},
                             auto_verdict=int(v.auto), human_verdict=None, reasons=v.reasons))
        done += len(mine)
        ctx.check()
    store.put("completions", sorted(rows, key=lambda r: r["idx"]))
    store.set_run(batch_id, status="completed", stage="ready for curation")
    return dict(batch_id=batch_id, n=len(rows))


def _job_loop(store: Store, params: dict, ctx: JobContext, models: ModelCache) -> dict:
    from steerheal.loop import run_loop

    run_id = int(params["run_id"])

    def say(stage: str, info: dict) -> None:
        ctx.progress(stage, info.get("step"), info.get("of"), round=info.get("round"))

    run = run_loop(store, run_id, say, should_stop=ctx.should_stop)
    return dict(status=run["status"], stage=run["stage"])


def _job_export(store: Store, params: dict, ctx: JobContext, models: ModelCache) -> dict:
    from steerheal.export import export_round

    ctx.progress("exporting")
    return export_round(store, int(params["run_id"]), int(params["round"]), params["out"],
                        merged=bool(params.get("merged", True)), say=lambda msg: ctx.progress(msg))


def _job_dose(store: Store, params: dict, ctx: JobContext, models: ModelCache) -> dict:
    from steerheal.dose import DoseConfig, DoseMeter, DoseTarget, calibrate, check_grid, dev_items, dose_curve
    from steerheal.presets import generation_prompts
    from steerheal.vectors import SteeringVector

    grid = check_grid(params["alphas"])
    target = DoseTarget(**params["target"]).validate() if params.get("target") else None
    cfg = DoseConfig(layers=params.get("layers", "0.45-0.55"), n_prompts=int(params.get("n_prompts", 16)),
                     max_new_tokens=int(params.get("max_new_tokens", 32)),
                     axis_items=int(params.get("axis_items", 16)),
                     drift_prompts=int(params.get("drift_prompts", 8))).validate()
    pair = params.get("pair")
    items = dev_items(pair, params.get("items"))
    vector = SteeringVector.load(params["vector"])
    ctx.progress("loading model")
    lm = models.get(params.get("model", "bundled"), params.get("load_in_4bit", False))
    meter = DoseMeter(lm, vector, generation_prompts(pair), cfg, items=items, should_stop=ctx.should_stop)
    total = len(grid) + (target.max_evaluations if target else 0)

    def report(points) -> None:
        ctx.progress("measuring the dose curve", len(points), total, points=[p.to_dict() for p in points])
        ctx.check()

    ctx.progress("measuring the dose curve", 0, total, points=[])
    points = dose_curve(meter, grid, on_point=report)
    result: dict = dict(points=[p.to_dict() for p in points])
    if target is not None:
        ctx.progress("calibrating", len(points), total, points=result["points"])
        found = calibrate(meter, target, grid=grid, on_point=report)
        result.update(points=[p.to_dict() for p in found.points], alpha=found.alpha, measure=found.measure,
                      evaluations=found.evaluations, reached=found.reached,
                      target=dict(kind=target.kind, value=target.value, sign=target.sign))
    done = len(result["points"])
    ctx.progress("done", done, done, points=result["points"])  # the bar ends full, whatever the budget left
    return result


HANDLERS: dict[str, Callable[[Store, dict, JobContext, ModelCache], dict]] = {
    "vector": _job_vector, "generate": _job_generate, "loop": _job_loop, "export": _job_export,
    "dose": _job_dose}


def run_job(store: Store, job: dict, models: ModelCache | None = None) -> dict:
    """Run one claimed job to its end, with a heartbeat thread; never raises for job errors."""
    ctx = JobContext(store, job["id"])
    stop_beat = threading.Event()

    def beat() -> None:
        while not stop_beat.wait(HEARTBEAT_SECONDS):
            try:
                if store.heartbeat(job["id"]):
                    ctx.cancelled.set()
            except Exception:  # a busy DB must not kill the job; the next beat retries
                log.debug("heartbeat failed", exc_info=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        result = HANDLERS[job["kind"]](store, job["params"], ctx, models or ModelCache())
        store.update_job(job["id"], status="completed", result=result, finished=time.time())
    except InterruptedError as err:  # Cancelled, or a stage that stopped on should_stop (a normal end)
        if not ctx.cancelled.is_set():
            store.update_job(job["id"], status="failed", error=f"interrupted: {err}", finished=time.time())
        else:
            store.update_job(job["id"], status="cancelled", error="cancelled by the user", finished=time.time())
    except SteerhealError as err:
        store.update_job(job["id"], status="failed", error=str(err), finished=time.time())
    except Exception as err:  # shown to the person as one line; the trace goes to the worker log
        log.error("job %s failed:\n%s", job["id"], traceback.format_exc())
        store.update_job(job["id"], status="failed", error=f"{type(err).__name__}: {err}", finished=time.time())
    finally:
        stop_beat.set()
        thread.join()
    return store.job(job["id"])


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def work(store: Store, poll_seconds: float = 0.5, once: bool = False, stop: threading.Event | None = None) -> int:
    """The worker loop: mark stale jobs, claim one, run it; repeat. Returns jobs run."""
    name, models, count = worker_name(), ModelCache(), 0
    stop = stop or threading.Event()
    while not stop.is_set():
        store.mark_stale_jobs(STALE_AFTER_SECONDS)
        job = store.claim_job(name)
        if job is None:
            if once:
                break
            stop.wait(poll_seconds)
            continue
        log.info("job %s (%s) claimed by %s", job["id"], job["kind"], name)
        run_job(store, job, models)
        count += 1
        if once:
            break
    return count
