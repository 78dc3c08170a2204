"""Run commands on the store: run, runs, export, report, worker."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from steerheal.cli.common import command, finite_float
from steerheal.errors import SteerhealError


def _run_config(args):
    import tomllib
    from dataclasses import replace

    from steerheal.loop import RunConfig

    data: dict = {}
    if args.config:
        if not args.config.is_file():
            raise SteerhealError(f"Config file {str(args.config)!r} does not exist.")
        try:
            data = tomllib.loads(args.config.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise SteerhealError(f"{args.config}: not valid TOML ({err}).") from None
    try:
        cfg = RunConfig.from_dict(data)
    except TypeError as err:
        raise SteerhealError(f"Bad run setting: {err}.") from None
    top = {k: getattr(args, k) for k in ("rounds", "n_completions", "max_new_tokens", "eval_limit", "think_tokens",
                                         "seed", "model", "n_contexts", "probe_tokens", "tinymfv", "pair",
                                         "drift_tokens", "drift_prompts", "incoherence_ceiling", "axis_limit",
                                         "absorption_contexts")
           if getattr(args, k) is not None}
    if args.random_control:
        top["random_control"] = True
    if args.load_in_4bit:
        top["load_in_4bit"] = True
    heal = {k: getattr(args, k) for k in ("epochs", "agg", "tau", "lam", "ref") if getattr(args, k) is not None}
    if args.data:
        top["data_dir"] = args.data
    if args.items:
        top["axis_items"] = str(Path(args.items).resolve())  # checked by validate(), naming file:line
    top.update(_dose_flags(args, cfg))
    return replace(cfg, **top, heal=replace(cfg.heal, **heal)).validate()


def _dose_flags(args, cfg) -> dict:
    """--alphas (numbers or auto), --target-kl / --target-kept, --backtrack-* as run settings."""
    from dataclasses import replace

    from steerheal.backtrack import BacktrackConfig

    out: dict = {}
    if args.alphas is not None:
        if args.alphas.strip() == "auto":
            out["alphas"] = "auto"
        else:
            try:
                out["alphas"] = tuple(float(a) for a in args.alphas.split(",") if a.strip())
            except ValueError:
                raise SteerhealError(f"--alphas {args.alphas!r}: give numbers separated by commas (2,3,4) "
                                     "or auto.") from None
    for key in ("target_kl", "target_kept"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    knobs = {k: getattr(args, f"backtrack_{k}") for k in ("threshold", "window", "scale", "max")
             if getattr(args, f"backtrack_{k}") is not None}
    if knobs:
        if "max" in knobs:
            knobs["max_backtracks"] = knobs.pop("max")
        out["backtrack"] = replace(cfg.backtrack or BacktrackConfig(), **knobs)
    return out


@command("run")
def cmd_run(args) -> int:
    from steerheal.loop import run_loop, start_run
    from steerheal.store import Store

    store = Store(args.db)
    if args.resume is not None:
        run_id = args.resume
        store.run(run_id)
    else:
        run_id = start_run(store, _run_config(args))
    print(f"run {run_id}", flush=True)
    if args.queue:
        from steerheal import jobs

        job_id = jobs.submit(store, "loop", {"run_id": run_id}, run_id=run_id)
        print(f"job {job_id} queued: a worker runs it (the app starts one; or `steerheal worker --db {args.db}`)")
        return 0
    from tqdm.auto import tqdm

    bar = tqdm(desc="starting", file=sys.stderr, dynamic_ncols=True, bar_format="{desc} [{elapsed}]")

    def progress(stage, info):
        bar.set_description_str(f"round {info.get('round')}: {stage}"
                                + (f" {info['step']}/{info['of']}" if "step" in info else ""))

    try:
        run = run_loop(store, run_id, progress)
    finally:
        bar.close()  # before any error message, so that message is the last line
    from steerheal.cli.science import cmd_summary

    cmd_summary(argparse.Namespace(db=args.db, run_id=run_id, json=False))
    from steerheal.summary import outcome

    print(f"status: {outcome(run)}" + (f" ({run['stop_reason']})" if run.get("stop_reason") else ""))
    return 0


@command("runs")
def cmd_runs(args) -> int:
    from steerheal.evals.tinymfv_data import demo_data_note
    from steerheal.store import Store
    from steerheal.summary import run_summary

    store = Store(args.db)
    out = []
    for run in store.runs():
        rounds = [r["round"] for r in store.rows("rounds", run["id"]) if r["status"] == "completed"]
        healed = {e["round"]: e for e in store.rows("evals", run["id"], stage="healed")}
        demo = demo_data_note(store.rows("evals", run["id"]))
        summary = run_summary(store, run["id"])
        out.append(dict(id=run["id"], status=summary["status"], stop_reason=run.get("stop_reason"),
                        sweep_id=run.get("sweep_id"),
                        model_id=run["model_id"], stage=run["stage"],
                        rounds_completed=len(rounds), tinymfv_comparable=demo is None,
                        per_stage=summary["table"], questions=summary["questions"],
                        rounds=[dict(round=r, auth_nats=healed[r]["auth_nats"], coherence=healed[r]["coherence"])
                                for r in sorted(healed)]))
    if args.json:
        print(json.dumps(out))
        return 0
    for r in out:
        last = r["rounds"][-1] if r["rounds"] else None
        tail = f"  last healed auth_nats {last['auth_nats']:.3f} coherence {last['coherence']:.3f}" if last else ""
        healed = [s for s in r["per_stage"] if s["stage"] == "healed" and s["axis"] is not None]
        if healed:
            tail += f"  last healed axis {healed[-1]['axis']:+.3f} incoherence {healed[-1]['incoherence']:.3f}"
        demo = "" if r["tinymfv_comparable"] else "  [demo vignettes: NOT comparable to tinymfv]"
        stop = f"  ({r['stop_reason']})" if r["stop_reason"] else ""
        print(f"run {r['id']:>3}  {r['status']:<11} rounds {r['rounds_completed']}  {r['stage']}{tail}{demo}{stop}")
    return 0


@command("export")
def cmd_export(args) -> int:
    from steerheal.export import export_round
    from steerheal.store import Store

    store = Store(args.db)
    store.run(args.run_id)
    if args.push_to_hub:
        from steerheal.export import check_repo_id

        check_repo_id(args.push_to_hub)
        if args.no_merged:
            raise SteerhealError("--push-to-hub uploads the merged model: drop --no-merged.")
    manifest = export_round(store, args.run_id, args.round, args.out, merged=not args.no_merged,
                            say=lambda msg: print(f"  {msg}", file=sys.stderr))
    if args.push_to_hub:
        from steerheal.export import push_to_hub

        manifest["hub_url"] = push_to_hub(args.out, args.push_to_hub, private=not args.public,
                                          say=lambda msg: print(f"  {msg}", file=sys.stderr))
    if args.json:
        print(json.dumps({**manifest, "out": str(Path(args.out).resolve())}))
    else:
        print(f"exported run {args.run_id} round {args.round} to {Path(args.out).resolve()}")
        for key in ("adapters", "merged", "vector", "hub_url"):
            if manifest[key]:
                print(f"  {key}: {manifest[key]}")
    return 0


@command("report")
def cmd_report(args) -> int:
    from steerheal.report import write_report
    from steerheal.store import Store

    store = Store(args.db)
    for run_id in args.run_ids:
        store.run(run_id)
    print(f"wrote {write_report(store, args.run_ids, args.out)}")
    return 0


@command("worker")
def cmd_worker(args) -> int:
    """Run background jobs from the store's queue until stopped (SIGTERM / Ctrl-C)."""
    import signal
    import threading

    from steerheal.jobs import work, worker_name
    from steerheal.store import Store

    if args.nice:
        os.nice(args.nice)  # the app's own workers yield the CPU to the UI process
    store = Store(args.db)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.getLogger().setLevel(logging.INFO)
    print(f"worker {worker_name()} on {store.path}", file=sys.stderr, flush=True)
    if args.exit_with_parent is not None:
        parent = args.exit_with_parent

        def watch() -> None:  # the app that started us is gone: stop once the job in hand is done
            while not stop.wait(2.0):
                if os.getppid() != parent:
                    stop.set()

        threading.Thread(target=watch, daemon=True).start()
    count = work(store, poll_seconds=args.poll, once=args.once, stop=stop)
    print(f"worker stopped after {count} job(s)", file=sys.stderr)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("run", help="run (or resume) the steer-filter-heal-bake-eval loop")
    p.add_argument("--config", type=Path, help="a run.toml (flags override it)")
    p.add_argument("--db", default="runs.db")
    p.add_argument("--resume", type=int, metavar="RUN_ID")
    p.add_argument("--model")
    p.add_argument("--data")
    for flag, typ in (("--rounds", int), ("--n-completions", int), ("--max-new-tokens", int), ("--epochs", int),
                      ("--eval-limit", int), ("--think-tokens", int), ("--seed", int), ("--n-contexts", int),
                      ("--probe-tokens", int), ("--tau", finite_float),
                      ("--lam", finite_float)):
        p.add_argument(flag, type=typ)
    p.add_argument("--alphas", help="strengths, comma-separated (default 2,3,4), or auto: calibrate each round "
                                    "to --target-kl or --target-kept")
    p.add_argument("--target-kl", type=finite_float, help="with --alphas auto: p95 per-token KL to base, nats (e.g. 1)")
    p.add_argument("--target-kept", type=finite_float, help="with --alphas auto: share of completions kept (e.g. 0.5)")
    p.add_argument("--backtrack-threshold", type=finite_float,
                   help="generate with backtracking: replay a window whose mean KL to base is above this (nats)")
    p.add_argument("--backtrack-window", type=int, help="tokens per backtracking window (default 8)")
    p.add_argument("--backtrack-scale", type=finite_float, help="alpha multiplier of a replayed window (default 0.5)")
    p.add_argument("--backtrack-max", type=int, help="replays per completion at most (default 2)")
    p.add_argument("--tinymfv", choices=["auto", "off", "subset", "full"],
                   help="tinymfv evals: full (132 rows), subset (--eval-limit rows, default 36, stratified), off; "
                        "auto (default): off on the bundled model, whose answers it cannot read, full otherwise")
    p.add_argument("--pair", help="persona preset (care-over-authority, love-humanity)")
    p.add_argument("--items", type=Path, help="axis items (JSONL: prompt, pos, neg) for a custom pair "
                                              "(default: the preset's bundled items)")
    p.add_argument("--axis-limit", type=int, help="score only the first N held-out axis items (default all)")
    p.add_argument("--drift-tokens", type=int, help="tokens per neutral continuation scored for incoherence (40)")
    p.add_argument("--drift-prompts", type=int, help="how many of the 40 neutral prompts (default all)")
    p.add_argument("--absorption-contexts", type=int, help="contexts the absorption is averaged over (16)")
    p.add_argument("--incoherence-ceiling", type=finite_float,
                   help="stop early when healed KL rmse to base exceeds the base's by this many nats (2.0)")
    p.add_argument("--agg", choices=["mean", "rmse", "p95", "max"])
    p.add_argument("--ref", choices=["base", "prev"])
    p.add_argument("--random-control", action="store_true", help="also eval a random vector of the same norms")
    p.add_argument("--4bit", dest="load_in_4bit", action="store_true",
                   help="QLoRA: 4-bit base weights (CUDA only); round adapters stay stacked, never folded")
    p.add_argument("--queue", action="store_true",
                   help="do not run here: queue the run as a job for the workers (the app's, or `steerheal worker`)")

    p = sub.add_parser("export", help="write a run's round-k adapters, merged model and vector")
    p.add_argument("run_id", type=int, metavar="RUN_ID")
    p.add_argument("--round", type=int, required=True, help="the round to export (0-based)")
    p.add_argument("--out", required=True, type=Path, help="a new folder")
    p.add_argument("--db", default="runs.db")
    p.add_argument("--no-merged", action="store_true", help="skip the merged model (adapters and vector only)")
    p.add_argument("--push-to-hub", metavar="OWNER/NAME",
                   help="also upload the merged model with its model card (needs network and HF_TOKEN)")
    p.add_argument("--public", action="store_true", help="with --push-to-hub: a public repository (default private)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("report", help="one self-contained HTML page with a run's charts and probe answers")
    p.add_argument("run_ids", type=int, nargs="+", metavar="RUN_ID")
    p.add_argument("--out", required=True, type=Path, help="the .html file to write")
    p.add_argument("--db", default="runs.db")

    p = sub.add_parser("worker", help="run background jobs (the app starts one; start more for more throughput)")
    p.add_argument("--db", default="runs.db")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between looks at the queue")
    p.add_argument("--once", action="store_true", help="run at most one job, then exit")
    p.add_argument("--nice", type=int, default=0, help="lower this worker's CPU priority by N (the app uses 10)")
    p.add_argument("--exit-with-parent", type=int, metavar="PID",
                   help="stop (after the job in hand) when process PID, which started this worker, exits")

    p = sub.add_parser("runs", help="list runs in the store")
    p.add_argument("--db", default="runs.db")
    p.add_argument("--json", action="store_true")


