"""`steerheal` command line. Errors the user can fix print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from steerheal.errors import SteerhealError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn
    return register


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # Deprecation notices from the libraries (argument renames inside transformers / PEFT) are
    # not the user's business on the command line; `-v` shows them.
    if not logging.getLogger().isEnabledFor(logging.INFO):
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*is deprecated.*")


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="bundled", help="'bundled' (default), a Hugging Face id, or a local directory")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the hub (off by default)")
    p.add_argument("--4bit", dest="load_in_4bit", action="store_true",
                   help="load the weights in 4-bit (bitsandbytes NF4; CUDA GPUs only)")


def _persona_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", default="care-over-authority", help="persona preset (care-over-authority, love-humanity)")
    p.add_argument("--pos", help="positive persona, completing 'You are ...' (overrides the preset)")
    p.add_argument("--neg", help="negative persona (overrides the preset)")
    p.add_argument("--contexts", type=Path, help="a text file of user messages, one per line (default: 80 bundled)")


def _load(args) -> "object":
    from steerheal.config import ModelSpec
    from steerheal.models import load_model

    return load_model(ModelSpec(name=args.model, dtype=args.dtype, device=args.device,
                                trust_remote_code=args.trust_remote_code, load_in_4bit=args.load_in_4bit))


def _pair_and_contexts(args):
    from steerheal.config import PersonaPair
    from steerheal.presets import default_contexts, persona_pair, read_lines

    pair = persona_pair(args.pair)
    if args.pos is not None or args.neg is not None:
        pair = PersonaPair(pos=args.pos if args.pos is not None else pair.pos,
                           neg=args.neg if args.neg is not None else pair.neg, name="custom")
    pair.validate()
    if args.contexts:
        if not args.contexts.is_file():
            raise SteerhealError(f"Context file {str(args.contexts)!r} does not exist.")
        contexts = read_lines(args.contexts.read_text(encoding="utf-8"))
        if not contexts:
            raise SteerhealError(f"Context file {str(args.contexts)!r} holds no messages: put one user message per line.")
    else:
        contexts = default_contexts()
    return pair, contexts


def _extract(lm, pair, contexts):
    from steerheal.progress import tqdm_progress
    from steerheal.vectors import extract_vector

    with tqdm_progress("extracting vector", unit="prompt") as progress:
        return extract_vector(lm, pair, contexts, progress=progress)


@command("vector")
def cmd_vector(args) -> int:
    pair, contexts = _pair_and_contexts(args)
    lm = _load(args)
    vector = _extract(lm, pair, contexts)
    path = vector.save(args.out)
    norms = vector.norms
    if args.json:
        print(json.dumps({"path": str(path), "norms": norms, "residual_norms": vector.meta["residual_norms"],
                          "n_contexts": vector.meta["n_contexts"], "model_id": lm.model_id}))
        return 0
    print(f"saved {path}  ({vector.n_layers} layers x {vector.hidden_size}, {len(contexts)} contexts)")
    print(f"{'layer':>5}  {'|v|':>8}  {'|h|':>8}  {'|v|/|h|':>7}")
    for i, (n, r) in enumerate(zip(norms, vector.meta["residual_norms"])):
        print(f"{i:>5}  {n:>8.3f}  {r:>8.2f}  {n / r:>7.2%}")
    return 0


@command("steer")
def cmd_steer(args) -> int:
    from steerheal.config import GenerationConfig, LayerBand, SteerConfig
    from steerheal.generate import generate
    from steerheal.vectors import SteeringVector

    if not args.prompt.strip():
        raise SteerhealError("--prompt is empty: give the user message to answer.")
    alphas: list[str] = args.alpha or ["2.0"]
    for a in alphas:
        _finite_float_or_error(a)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, greedy=args.greedy, seed=args.seed).validate()
    lm = _load(args)
    LayerBand(args.layers).resolve(lm.n_layers)
    if args.vector:
        vector = SteeringVector.load(args.vector)
    else:
        pair, contexts = _pair_and_contexts(args)
        vector = _extract(lm, pair, contexts)
    base = generate(lm, [args.prompt], gen)[0].text
    steered = {}
    for a in alphas:
        cfg = SteerConfig(alpha=float(a), layers=args.layers)
        steered[a] = generate(lm, [args.prompt], gen, vector, cfg)[0].text
    if args.json:
        print(json.dumps({"base": base, "steered": steered}))
        return 0
    print(f"=== base ===\n{base}\n")
    for a, text in steered.items():
        print(f"=== alpha {a} (layers {args.layers}) ===\n{text}\n")
    return 0


def _finite_float_or_error(text: str) -> float:
    try:
        return _finite_float(text)
    except argparse.ArgumentTypeError as err:
        raise SteerhealError(f"--alpha {err}: give a finite number such as 1.5 or -2.") from None


@command("prepare")
def cmd_prepare(args) -> int:
    """Convert the bundled GGUF model to a safetensors cache once (make does this)."""
    from steerheal.models import bundled_model_dir

    print(f"bundled model ready at {bundled_model_dir()}")
    return 0


@command("eval")
def cmd_eval(args) -> int:
    from steerheal.config import LayerBand, SteerConfig, persona_system_prompt
    from steerheal.evals.tinymfv import EvalConfig, evaluate
    from steerheal.evals.tinymfv_data import load_vignettes
    from steerheal.presets import persona_pair
    from steerheal.progress import tqdm_progress
    from steerheal.vectors import SteeringVector

    cfg = EvalConfig(config=args.config, condition=args.condition, think_tokens=args.think_tokens,
                     batch_size=args.batch_size, limit=args.limit, data_dir=args.data,
                     protocol=args.protocol, workers=args.workers).validate()
    if (args.vector is None) != (args.alpha is None):
        raise SteerhealError("A steered eval needs both --vector FILE and --alpha A.")
    data = load_vignettes(cfg.config, cfg.condition, cfg.data_dir)
    if cfg.limit and cfg.limit > len(data.rows):
        raise SteerhealError(f"--limit {cfg.limit} is larger than the data ({len(data.rows)} rows).")
    vector = SteeringVector.load(args.vector) if args.vector else None
    lm = _load(args)
    steer_cfg, persona, stage = None, None, "base"
    if vector is not None:
        LayerBand(args.layers).resolve(lm.n_layers)
        steer_cfg, stage = SteerConfig(alpha=args.alpha, layers=args.layers), "steered"
    if args.persona_prompt:
        persona, stage = persona_system_prompt(persona_pair(args.pair).pos), "prompted"
    with tqdm_progress(f"tinymfv {cfg.config}/{cfg.condition} T={cfg.think_tokens}", unit="row") as progress:
        result = evaluate(lm, data, cfg, stage=stage, vector=vector, steer_cfg=steer_cfg, persona_prompt=persona,
                          progress=progress)
    m = result.metrics
    if args.json:
        out = {k: v for k, v in m.items()}
        out.update(stage=stage, data_source=result.meta["data_source"], warning=result.warning,
                   seconds=result.meta["seconds"], think_tokens=cfg.think_tokens, protocol=cfg.protocol)
        if args.rows:
            out["rows"] = result.to_dict()["rows"]
        print(json.dumps(out))
        return 0
    print(f"tinymfv {data.config}/{data.condition}, {m['n_rows']} rows, T = {cfg.think_tokens}, stage {stage}, "
          f"protocol {cfg.protocol}")
    print(f"data: {result.meta['data_source']}")
    print(f"{'foundation':<12} {'model p':>8} {'human p':>8}")
    for key, p in m["profile"].items():
        print(f"{key:<12} {p:>8.4f} {m['human_profile'][key]:>8.4f}")
    print(f"auth_nats {m['auth_nats']:.4f}   care_nats {m['care_nats']:.4f}   coherence {m['coherence']:.4f} "
          f"({result.meta['coherence_band']})   top1_acc {m['top1_acc']:.4f}   {result.meta['seconds']:.0f}s")
    if result.warning:
        print(f"WARNING: {result.warning}")
    return 0


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
                                         "seed", "model", "n_contexts", "probe_tokens", "tinymfv")
           if getattr(args, k) is not None}
    if args.random_control:
        top["random_control"] = True
    if args.load_in_4bit:
        top["load_in_4bit"] = True
    heal = {k: getattr(args, k) for k in ("epochs", "agg", "tau", "lam", "ref") if getattr(args, k) is not None}
    if args.data:
        top["data_dir"] = args.data
    return replace(cfg, **top, heal=replace(cfg.heal, **heal)).validate()


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
    print(f"{'round':>5} {'stage':>9} {'auth_nats':>10} {'care_nats':>10} {'coherence':>10}")
    for e in store.db["evals"].rows_where("run_id = ?", [run_id], order_by="round, stage"):
        print(f"{e['round']:>5} {e['stage']:>9} {e['auth_nats']:>10.4f} {e['care_nats']:>10.4f} {e['coherence']:>10.4f}")
    print(f"status: {run['status']}")
    return 0


@command("runs")
def cmd_runs(args) -> int:
    from steerheal.evals.tinymfv_data import demo_data_note
    from steerheal.store import Store

    store = Store(args.db)
    out = []
    for run in store.runs():
        rounds = [r["round"] for r in store.rows("rounds", run["id"]) if r["status"] == "completed"]
        healed = {e["round"]: e for e in store.rows("evals", run["id"], stage="healed")}
        demo = demo_data_note(store.rows("evals", run["id"]))
        out.append(dict(id=run["id"], status=run["status"], model_id=run["model_id"], stage=run["stage"],
                        rounds_completed=len(rounds), tinymfv_comparable=demo is None,
                        rounds=[dict(round=r, auth_nats=healed[r]["auth_nats"], coherence=healed[r]["coherence"])
                                for r in sorted(healed)]))
    if args.json:
        print(json.dumps(out))
        return 0
    for r in out:
        last = r["rounds"][-1] if r["rounds"] else None
        tail = f"  last healed auth_nats {last['auth_nats']:.3f} coherence {last['coherence']:.3f}" if last else ""
        demo = "" if r["tinymfv_comparable"] else "  [demo vignettes: NOT comparable to tinymfv]"
        print(f"run {r['id']:>3}  {r['status']:<11} rounds {r['rounds_completed']}  {r['stage']}{tail}{demo}")
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


@command("export-vector")
def cmd_export_vector(args) -> int:
    from steerheal.gguf_export import write_control_vector
    from steerheal.vectors import SteeringVector

    if not args.vector.is_file():
        raise SteerhealError(f"Vector file {str(args.vector)!r} does not exist.")
    vector = SteeringVector.load(args.vector)
    out = write_control_vector(vector, args.gguf, args.model_hint)
    print(f"wrote {out} ({vector.n_layers} layers x {vector.hidden_size}); "
          f"use: llama-cli --control-vector-scaled {out.name} ALPHA")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerheal", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("prepare", help="convert the bundled model once to a fast-loading cache")

    p = sub.add_parser("vector", help="extract a contrastive steering vector and save it (safetensors)")
    _model_args(p)
    _persona_args(p)
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("steer", help="print base and steered completions for one prompt")
    _model_args(p)
    _persona_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--alpha", action="append", help="steering strength (repeatable; negative allowed). Default 2.0")
    p.add_argument("--layers", default="0.45-0.55", help="layer band: fractions 0.45-0.55 or indices 13-15")
    p.add_argument("--vector", type=Path, help="a saved vector (default: extract the persona pair now)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("eval", help="tinymfv forced-choice moral-foundations eval")
    _model_args(p)
    p.add_argument("--data", help="folder with vignettes_{config}_{condition}.jsonl (or set STEERHEAL_TINYMFV_DIR)")
    p.add_argument("--config", default="classic", help="classic, scifi or ai-actor")
    p.add_argument("--condition", default="other_violate", help="other_violate or self_violate")
    p.add_argument("--think-tokens", type=int, default=128, help="think budget T (reference 128)")
    p.add_argument("--limit", type=int, help="a stratified subset of N rows (never a prefix)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="frames per batch (32 per worker measured as fast as 64 on 2 cores, half the memory)")
    p.add_argument("--workers", type=int, default=0,
                   help="batches run at once on threads; 0 = auto (2 on a CPU with >= 2 threads, 1 on a GPU)")
    p.add_argument("--protocol", default="tinymfv", choices=["tinymfv", "clean"],
                   help="tinymfv (default): read the answer exactly as the reference code does, reproducing its "
                        "numbers; clean: the protocol as written (true positions, last think token fed, "
                        "nothing masked)")
    p.add_argument("--vector", type=Path, help="evaluate steered with this vector (needs --alpha)")
    p.add_argument("--alpha", type=_finite_float, help="steering strength for --vector")
    p.add_argument("--layers", default="0.45-0.55")
    p.add_argument("--persona-prompt", action="store_true", help="prompting baseline: the positive persona as system message")
    p.add_argument("--pair", default="care-over-authority", help="persona preset for --persona-prompt")
    p.add_argument("--rows", action="store_true", help="with --json, include per-row results")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="run (or resume) the steer-filter-heal-bake-eval loop")
    p.add_argument("--config", type=Path, help="a run.toml (flags override it)")
    p.add_argument("--db", default="runs.db")
    p.add_argument("--resume", type=int, metavar="RUN_ID")
    p.add_argument("--model")
    p.add_argument("--data")
    for flag, typ in (("--rounds", int), ("--n-completions", int), ("--max-new-tokens", int), ("--epochs", int),
                      ("--eval-limit", int), ("--think-tokens", int), ("--seed", int), ("--n-contexts", int),
                      ("--probe-tokens", int), ("--tau", _finite_float),
                      ("--lam", _finite_float)):
        p.add_argument(flag, type=typ)
    p.add_argument("--tinymfv", choices=["on", "off"], help="off: skip the tinymfv evals (and the coherence early stop)")
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

    p = sub.add_parser("export-vector", help="write a vector as a llama.cpp control-vector GGUF")
    p.add_argument("vector", type=Path, metavar="VECTOR.safetensors")
    p.add_argument("--gguf", required=True, type=Path, help="the .gguf file to write")
    p.add_argument("--model-hint", help="model type recorded in the file (default: from the vector, e.g. llama)")

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except SteerhealError as err:
        print(f"steerheal: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("steerheal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
