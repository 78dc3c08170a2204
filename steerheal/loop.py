"""The multi-round steer -> filter -> heal -> bake -> eval loop (SCIENCE.md section 7).

Every stage writes its results to the store before the next starts, and a stage whose
results are already stored is skipped, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import time
from dataclasses import replace
from typing import Callable

import torch

from steerheal import bake
from steerheal.config import GenerationConfig, LayerBand, ModelSpec, SteerConfig, persona_system_prompt
from steerheal.errors import SteerhealError
from steerheal.evals.probes import answer_probes
from steerheal.evals.tinymfv import DEGRADED
from steerheal.faults import crash_point
from steerheal.filters import evaluate_completions
from steerheal.generate import generate
from steerheal.heal import TrainExample, heal
from steerheal.memory import release_memory, resident_mb
from steerheal.models import load_model
from steerheal.presets import default_contexts, generation_prompts
from steerheal.run_config import RunConfig  # noqa: F401  (re-exported: callers import it from here)
from steerheal.measure import Instruments
from steerheal.store import Store
from steerheal.vectors import SteeringVector, extract_vector

Progress = Callable[[str, dict], None]


def _train_row(run_id: int, round_: int, step: dict) -> dict:
    return dict(run_id=run_id, round=round_, step=step["step"], loss=step["loss"], nll=step["nll"],
                divergence=step["divergence"], barrier_fired=int(step["fired"]), lr=step["lr"])


def _has(store: Store, table: str, run_id: int, round_: int, **where) -> bool:
    return bool(store.rows(table, run_id, round_, **where))


def start_run(store: Store, cfg: RunConfig) -> int:
    cfg.validate()
    return store.create_run(cfg.to_dict(), cfg.model, cfg.seed)


def run_loop(store: Store, run_id: int, progress: Progress | None = None,
             should_stop: Callable[[], bool] | None = None) -> dict:
    """Run (or resume) a run to completion. Returns the run row.

    `should_stop` is polled within every stage (eval batches, decoding steps, extraction
    batches, heal steps); when it returns True the run stops with status "cancelled"
    (resumable) and InterruptedError is raised."""
    run = store.run(run_id)
    cfg = RunConfig.from_dict(run["config"]).validate()
    report = progress or (lambda stage, info: None)

    def say(stage: str, info: dict) -> None:
        if should_stop is not None and should_stop():
            raise InterruptedError("cancelled")
        report(stage, info)

    store.remove_orphans(run_id)
    store.set_run(run_id, status="running", error=None)
    try:
        _run(store, run_id, cfg, say, should_stop)
    except SteerhealError as err:
        store.set_run(run_id, status="failed", error=str(err))
        raise
    except (KeyboardInterrupt, InterruptedError) as err:
        if should_stop is not None and should_stop():  # the person asked: a normal end, resumable
            store.set_run(run_id, status="cancelled", error="cancelled by the user")
        else:
            store.set_run(run_id, status="interrupted", error=str(err) or "interrupted")
        raise
    except (OSError, sqlite3.OperationalError) as err:
        message = storage_error(err, store, run_id)
        if message is None:
            store.set_run(run_id, status="failed", error=f"{type(err).__name__}: {err}")
            raise
        try:
            store.set_run(run_id, status="failed", error=message)
        except sqlite3.Error:  # the DB itself cannot be written: it still says "running", resume works the same
            pass
        raise SteerhealError(message) from err
    except Exception as err:
        store.set_run(run_id, status="failed", error=f"{type(err).__name__}: {err}")
        raise
    return store.run(run_id)


def _run(store: Store, run_id: int, cfg: RunConfig, say: Progress,
         should_stop: Callable[[], bool] | None = None) -> None:
    torch.manual_seed(cfg.seed)
    lm = load_model(ModelSpec(name=cfg.model, load_in_4bit=cfg.load_in_4bit))
    LayerBand(cfg.layers).resolve(lm.n_layers)  # a band outside this model fails before any eval
    pair = cfg.persona_pair()
    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    # Rebuild the model at the last finished round from its adapters.
    done_rounds = [r["round"] for r in store.rows("rounds", run_id) if r["status"] == "completed"]
    adapters = [store.artifact(run_id, r, "adapter") for r in range(len(done_rounds))]
    if any(a is None for a in adapters):
        raise SteerhealError("A completed round's adapter file is missing: the run cannot be rebuilt.")
    bake.load_adapters(lm, adapters)
    measures = Instruments(store, run_id, cfg, lm, say, should_stop)

    store.set_run(run_id, stage="base: evals")
    measures.measure(-1, "base")
    if not _has(store, "probes", run_id, -1):
        store.put("probes", [dict(run_id=run_id, round=-1, prompt=p.prompt, answer=p.answer, n_tokens=p.n_tokens)
                             for p in answer_probes(lm, max_new_tokens=cfg.probe_tokens)])
    measures.measure(-1, "prompted", persona=persona_system_prompt(pair.pos))
    v0 = None
    for round_ in range(len(done_rounds), cfg.rounds):
        earlier = store.rows("rounds", run_id, round_)
        curated = bool(earlier) and earlier[0]["status"] == "curated"
        started = earlier[0]["started"] if earlier and earlier[0]["started"] else time.time()
        store.put("rounds", [dict(run_id=run_id, round=round_, status="curated" if curated else "running",
                                  started=started, finished=None)])
        store.set_run(run_id, stage=f"round {round_}: vector")
        say("vector", {"round": round_})
        vector = _round_vector(store, run_id, round_, lm, cfg, pair, say)
        if round_ == 0:
            v0 = vector
        elif v0 is None:
            v0 = SteeringVector.load(store.artifact(run_id, 0, "vector.safetensors"))
        alphas = _round_alphas(store, run_id, round_, lm, cfg, vector, say, should_stop)
        mid_alpha = sorted(alphas)[len(alphas) // 2]
        if round_ == 0 and cfg.random_control:
            measures.measure(0, "random", vector=vector.random_like(cfg.seed), alpha=mid_alpha)
        if not _has(store, "vectors", run_id, round_):
            path = store.artifact(run_id, round_, "vector.safetensors")
            digest = store.rows("artifacts", run_id, round_, kind="vector.safetensors")[0]["sha256"]
            store.put("vectors", [dict(run_id=run_id, round=round_, path=str(path), sha256=digest,
                                       norms=vector.norms, cos_v0=vector.mean_cosine(v0))])
        if not _has(store, "completions", run_id, round_):
            _generate_and_filter(store, run_id, round_, lm, cfg, vector, alphas, gen_cfg, say, should_stop)
        if cfg.curation == "manual" and not curated:
            store.put("rounds", [dict(run_id=run_id, round=round_, status="waiting", started=started, finished=None)])
            store.set_run(run_id, status="waiting", stage=f"round {round_}: waiting for curation")
            say("waiting", {"round": round_})
            return
        adapter = store.artifact(run_id, round_, "adapter")
        if adapter is None:
            _heal_round(store, run_id, round_, lm, cfg, say, should_stop)
        else:  # healed before a crash: the saved adapter is this round's result
            bake.load_adapters(lm, [adapter], first_round=round_)
        measures.measure(round_, "steered", vector=vector, alpha=mid_alpha)
        measures.measure(round_, "healed")
        measures.absorption(round_, vector, mid_alpha)
        if not _has(store, "probes", run_id, round_):
            store.set_run(run_id, stage=f"round {round_}: probes")
            answers = answer_probes(lm, max_new_tokens=cfg.probe_tokens)
            crash_point(f"round{round_}:probes")
            store.put("probes", [dict(run_id=run_id, round=round_, prompt=p.prompt, answer=p.answer,
                                      n_tokens=p.n_tokens) for p in answers])
        release_memory()
        store.put("rounds", [dict(run_id=run_id, round=round_, status="completed", started=started,
                                  finished=time.time(), rss_mb=resident_mb(), db_mb=store.size_mb())])
        reason = stop_reason(store, run_id, round_, cfg)
        if reason:
            store.set_run(run_id, stop_reason=reason)
            say("stopped early", {"round": round_, "reason": reason})
            break
    store.set_run(run_id, status="completed", stage="done")


def stop_reason(store: Store, run_id: int, round_: int, cfg: RunConfig) -> str | None:
    """Why the loop stops after this round, or None: the healed model's headline incoherence
    rose more than the ceiling above the base's; or, only when the base answers tinymfv's
    format (coherence >= 0.85, so the number means something), its tinymfv coherence fell
    below the floor."""
    healed = store.rows("drift_evals", run_id, round_, stage="healed")
    base = store.rows("drift_evals", run_id, -1, stage="base")
    if healed and base and healed[0]["headline"] > base[0]["headline"] + cfg.incoherence_ceiling:
        return (f"stopped early after round {round_} of {cfg.rounds}: healed incoherence (KL rmse to base on neutral "
                f"prompts) {healed[0]['headline']:.3f} > base {base[0]['headline']:.3f} + ceiling "
                f"{cfg.incoherence_ceiling:g}")
    healed_t = store.rows("evals", run_id, round_, stage="healed")
    base_t = store.rows("evals", run_id, -1, stage="base")
    if healed_t and base_t and base_t[0]["coherence"] >= DEGRADED:
        floor = cfg.coherence_floor if base_t[0]["coherence"] >= cfg.coherence_floor \
            else cfg.coherence_floor * base_t[0]["coherence"]
        if healed_t[0]["coherence"] < floor:
            return (f"stopped early after round {round_} of {cfg.rounds}: healed tinymfv coherence "
                    f"{healed_t[0]['coherence']:.3f} < floor {floor:.3f}")
    return None


def _round_alphas(store: Store, run_id: int, round_: int, lm, cfg: RunConfig, vector: SteeringVector,
                  say: Progress, should_stop) -> tuple[float, ...]:
    """The round's strengths: the fixed ones, or (alphas = "auto") the calibrated alpha times each
    of auto_spread, calibrated on the current model and vector (stored; a resumed round reuses it)."""
    fixed = cfg.fixed_alphas()
    if fixed is not None:
        return fixed
    stored = store.rows("calibrations", run_id, round_)
    if stored:
        return tuple(json.loads(stored[0]["alphas"]))
    from steerheal.dose import DoseConfig, DoseMeter, calibrate

    target = cfg.dose_target()
    store.set_run(run_id, stage=f"round {round_}: calibrate")
    say("calibrate", {"round": round_, "target": target.label})
    t0 = time.time()
    meter = DoseMeter(lm, vector, _generation_prompts(cfg),
                      DoseConfig(layers=cfg.layers, n_prompts=cfg.dose_prompts, max_new_tokens=min(32, cfg.max_new_tokens),
                                 seed=cfg.seed + round_, axis_items=0, drift_prompts=0, filters=cfg.filters),
                      should_stop=should_stop)

    def evaluated(points) -> None:
        say("calibrate", {"round": round_, "step": len(points), "of": target.max_evaluations})
        crash_point(f"round{round_}:calibrating")

    found = calibrate(meter, target, on_point=evaluated)
    alphas = tuple(round(found.alpha * k, 4) for k in cfg.auto_spread)
    store.put("calibrations", [dict(run_id=run_id, round=round_, kind=target.kind, target=target.value,
                                    alpha=found.alpha, measure=found.measure, evaluations=found.evaluations,
                                    reached=int(found.reached), alphas=list(alphas),
                                    points=[p.to_dict() for p in found.points], seconds=round(time.time() - t0, 2))])
    return alphas


def _generation_prompts(cfg: RunConfig) -> list[str]:
    return generation_prompts(cfg.pair if cfg.persona_pair().name != "custom" else None)


def _generate_and_filter(store: Store, run_id: int, round_: int, lm, cfg: RunConfig, vector: SteeringVector,
                         alphas: tuple[float, ...], gen_cfg: GenerationConfig, say: Progress, should_stop) -> None:
    store.set_run(run_id, stage=f"round {round_}: generate")
    prompts = _generation_prompts(cfg)
    jobs = [(prompts[i % len(prompts)], alphas[i % len(alphas)]) for i in range(cfg.n_completions)]
    say("generate", {"round": round_, "n": len(jobs)})
    sc = SteerConfig(alpha=1.0, layers=cfg.layers)
    comps = generate(lm, [p for p, _ in jobs], replace(gen_cfg, seed=cfg.seed + round_), vector, sc,
                     alphas=[a for _, a in jobs], should_stop=should_stop, backtrack=cfg.backtrack)
    crash_point(f"round{round_}:generated")
    say("filter", {"round": round_})
    verdicts = evaluate_completions(lm, [c.prompt for c in comps], [c.token_ids for c in comps],
                                    [c.text for c in comps], gen_cfg.system_prompt, cfg.filters, vector,
                                    [replace(sc, alpha=a) for _, a in jobs])
    rows = [dict(run_id=run_id, round=round_, idx=k, prompt=c.prompt, alpha=alpha, text=c.text,
                 n_tokens=c.n_tokens, scores={"checks": v.to_dict()["checks"], "kl": v.kl,
                                              "token_ids": c.token_ids,
                                              **({"backtracks": [b.to_dict() for b in c.backtracks]}
                                                 if cfg.backtrack is not None else {})},
                 auto_verdict=int(v.auto), human_verdict=None, reasons=v.reasons)
            for k, ((_, alpha), c, v) in enumerate(zip(jobs, comps, verdicts))]
    store.put("completions", sorted(rows, key=lambda r: r["idx"]))


def _round_vector(store: Store, run_id: int, round_: int, lm, cfg: RunConfig, pair, say: Progress) -> SteeringVector:
    """This round's vector: re-extracted from the current model, or the one stored before a crash.
    Reports prompts done / total as it goes (a cancel request stops it between batches)."""
    stored = store.artifact(run_id, round_, "vector.safetensors")
    if stored is not None:
        return SteeringVector.load(stored)
    pool = list(cfg.contexts) if cfg.contexts else default_contexts()

    def extracted(done: int, total: int) -> None:
        say("vector", {"round": round_, "step": done, "of": total})

    vector = extract_vector(lm, pair, pool[: cfg.n_contexts], progress=extracted)
    store.save_artifact(run_id, round_, "vector.safetensors", vector.save)
    return vector


def _heal_round(store: Store, run_id: int, round_: int, lm, cfg: RunConfig, say: Progress,
                should_stop: Callable[[], bool] | None) -> None:
    completions = store.rows("completions", run_id, round_)
    kept = [c for c in completions if (c["human_verdict"] if c["human_verdict"] is not None else c["auto_verdict"])]
    examples = [TrainExample(c["prompt"], json.loads(c["scores"])["token_ids"]) for c in kept]
    store.set_run(run_id, stage=f"round {round_}: heal")
    say("heal", {"round": round_, "kept": len(examples)})

    def log_step(step: int, total: int, rec: dict) -> None:
        # one row per step as it happens, so the UI draws loss curves live; a re-run
        # of the heal replaces them (keyed by run, round, step)
        store.put("train_logs", [_train_row(run_id, round_, rec)])
        store.set_run(run_id, stage=f"round {round_}: heal step {step}/{total}")
        crash_point(f"round{round_}:heal-step{step}")
        say("heal step", {"round": round_, "step": step, "of": total, **rec})

    result = heal(lm, examples, replace(cfg.heal, seed=cfg.seed), round_=round_, progress=log_step,
                  should_stop=should_stop)
    store.put("train_logs", [_train_row(run_id, round_, s) for s in result.steps])
    store.set_run(run_id, stage=f"round {round_}: bake")
    store.save_artifact(run_id, round_, "adapter", lambda tmp: bake.save_adapter(lm, round_, tmp))


_STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                   errno.EFBIG: "a file grew past the size limit", errno.EROFS: "the data folder is read-only",
                   errno.EACCES: "the data folder is not writable", errno.EPERM: "the data folder is not writable"}


def storage_error(err: BaseException, store: Store, run_id: int) -> str | None:
    """A plain message for a failure to write the store or its files (None for other errors)."""
    if isinstance(err, sqlite3.OperationalError):
        text = str(err).lower()
        if "disk is full" in text:
            why = "the disk is full"
        elif "disk i/o" in text:
            why = "the disk failed, filled up or became read-only"
        elif "readonly" in text or "read-only" in text:
            why = "the data folder is read-only"
        else:
            return None
    elif isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
        why = _STORAGE_ERRNOS[err.errno]
    else:
        return None
    where = getattr(err, "filename", None) or store.path.parent
    return (f"Could not write to {where}: {why} ({err}). Run {run_id} is marked failed; everything it stored "
            f"before this is intact. Free space or fix the permissions of {store.path.parent}, then continue "
            f"with: steerheal run --db {store.path} --resume {run_id}")


