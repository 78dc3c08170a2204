"""Lab commands on one model: prepare, vector, steer, eval, export-vector."""

from __future__ import annotations

import json
from pathlib import Path

from steerheal.cli.common import (command, extract_with_progress, finite_float, finite_float_or_error, load_from_args,
                                  model_args, pair_and_contexts, persona_args, stage_from_args)
from steerheal.errors import SteerhealError


@command("vector")
def cmd_vector(args) -> int:
    pair, contexts = pair_and_contexts(args)
    lm = load_from_args(args)
    vector = extract_with_progress(lm, pair, contexts)
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
        finite_float_or_error(a)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, greedy=args.greedy, seed=args.seed).validate()
    lm = load_from_args(args)
    LayerBand(args.layers).resolve(lm.n_layers)
    if args.vector:
        vector = SteeringVector.load(args.vector)
    else:
        pair, contexts = pair_and_contexts(args)
        vector = extract_with_progress(lm, pair, contexts)
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


@command("prepare")
def cmd_prepare(args) -> int:
    """Convert the bundled GGUF model to a safetensors cache once (make does this)."""
    from steerheal.models import bundled_model_dir

    print(f"bundled model ready at {bundled_model_dir()}")
    return 0


@command("eval")
def cmd_eval(args) -> int:
    from steerheal.evals.tinymfv import EvalConfig, evaluate
    from steerheal.evals.tinymfv_data import load_vignettes
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
    lm = load_from_args(args)
    steer_cfg, persona, stage = stage_from_args(args, lm, vector)
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


def add_parsers(sub) -> None:
    sub.add_parser("prepare", help="convert the bundled model once to a fast-loading cache")

    p = sub.add_parser("vector", help="extract a contrastive steering vector and save it (safetensors)")
    model_args(p)
    persona_args(p)
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("steer", help="print base and steered completions for one prompt")
    model_args(p)
    persona_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--alpha", action="append", help="steering strength (repeatable; negative allowed). Default 2.0")
    p.add_argument("--layers", default="0.45-0.55", help="layer band: fractions 0.45-0.55 or indices 13-15")
    p.add_argument("--vector", type=Path, help="a saved vector (default: extract the persona pair now)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("eval", help="tinymfv forced-choice moral-foundations eval")
    model_args(p)
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
    p.add_argument("--alpha", type=finite_float, help="steering strength for --vector")
    p.add_argument("--layers", default="0.45-0.55")
    p.add_argument("--persona-prompt", action="store_true", help="prompting baseline: the positive persona as system message")
    p.add_argument("--pair", default="care-over-authority", help="persona preset for --persona-prompt")
    p.add_argument("--rows", action="store_true", help="with --json, include per-row results")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("export-vector", help="write a vector as a llama.cpp control-vector GGUF")
    p.add_argument("vector", type=Path, metavar="VECTOR.safetensors")
    p.add_argument("--gguf", required=True, type=Path, help="the .gguf file to write")
    p.add_argument("--model-hint", help="model type recorded in the file (default: from the vector, e.g. llama)")
