"""Time each phase of one default round on the current device.

    python bench/round.py [--model bundled] [--n-completions 32] [--max-new-tokens 64]
                          [--epochs 2] [--eval-limit 0 (all 132)] [--think-tokens 16]

Phases: extract (vector), generate, filter, heal, bake (save adapter + fold), eval (steered
and healed), probes. Prints seconds and tokens per second per phase, the total, peak RSS,
and on a GPU the ratio to the ~40 minutes per round of the published research code.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from steerheal import bake  # noqa: E402
from steerheal.config import GenerationConfig, SteerConfig  # noqa: E402
from steerheal.evals.probes import answer_probes  # noqa: E402
from steerheal.evals.tinymfv import EvalConfig, evaluate  # noqa: E402
from steerheal.evals.tinymfv_data import load_vignettes  # noqa: E402
from steerheal.filters import evaluate_completions  # noqa: E402
from steerheal.generate import generate  # noqa: E402
from steerheal.heal import HealConfig, TrainExample, heal  # noqa: E402
from steerheal.models import load_model  # noqa: E402
from steerheal.presets import axis_prompts, default_contexts, persona_pair  # noqa: E402
from steerheal.vectors import extract_vector  # noqa: E402

SEED_MINUTES_PER_ROUND = 40.0


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--data", default=os.environ.get("STEERHEAL_TINYMFV_DIR"))
    ap.add_argument("--n-completions", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--eval-limit", type=int, default=0, help="0 = all rows")
    ap.add_argument("--think-tokens", type=int, default=16)
    ap.add_argument("--alphas", default="2,3,4")
    args = ap.parse_args()

    timings: list[tuple[str, float, int]] = []  # phase, seconds, tokens processed

    def timed(name, fn, tokens=lambda out: 0):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        timings.append((name, time.perf_counter() - t0, tokens(out)))
        print(f"  {name:<8} {timings[-1][1]:7.1f} s", flush=True)
        return out

    a, w = torch.randn(4096, 576), torch.randn(1536, 576)
    torch.nn.functional.linear(a, w)
    t0 = time.perf_counter()
    for _ in range(10):
        torch.nn.functional.linear(a, w)
    host_gflops = 10 * 2 * 4096 * 576 * 1536 / (time.perf_counter() - t0) / 1e9
    print(f"host float32 matmul: {host_gflops:.0f} GFLOP/s (absolute times scale with it)")
    lm = load_model(args.model)
    print(f"model {lm.model_id} on {lm.device}, {torch.get_num_threads()} threads", flush=True)
    data = load_vignettes(data_dir=args.data)
    ecfg = EvalConfig(think_tokens=args.think_tokens, limit=args.eval_limit or None)
    alphas = [float(a) for a in args.alphas.split(",")]
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, seed=0)
    prompts = axis_prompts()
    jobs = [(prompts[i % len(prompts)], alphas[i % len(alphas)]) for i in range(args.n_completions)]

    vector = timed("extract", lambda: extract_vector(lm, persona_pair("care-over-authority"), default_contexts()))

    def run_generate():  # every alpha in one batched sweep, as the loop does
        comps = generate(lm, [p for p, _ in jobs], gen, vector, SteerConfig(alpha=1.0), alphas=[a for _, a in jobs])
        return [(c, SteerConfig(alpha=a)) for c, (_, a) in zip(comps, jobs)]

    comps = timed("generate", run_generate, tokens=lambda out: sum(c.n_tokens for c, _ in out))
    verdicts = timed("filter", lambda: evaluate_completions(
        lm, [c.prompt for c, _ in comps], [c.token_ids for c, _ in comps], [c.text for c, _ in comps],
        gen.system_prompt, None, vector, [sc for _, sc in comps]),
        tokens=lambda out: 2 * sum(c.n_tokens for c, _ in comps))
    kept = [TrainExample(c.prompt, c.token_ids) for (c, _), v in zip(comps, verdicts) if v.auto]
    if len(kept) < 8:  # the bench measures speed: train on everything when the filters drop most
        kept = [TrainExample(c.prompt, c.token_ids) for c, _ in comps]
    hcfg = HealConfig(rank=16, lora_alpha=32, epochs=args.epochs)
    result = timed("heal", lambda: heal(lm, kept, hcfg),
                   tokens=lambda out: args.epochs * sum(len(e.completion_ids) for e in kept))
    with tempfile.TemporaryDirectory() as tmp:
        timed("bake", lambda: (bake.unmerge(lm), bake.save_adapter(lm, 0, Path(tmp) / "adapter"), bake.merge(lm)))
    steer_cfg = SteerConfig(alpha=sorted(alphas)[len(alphas) // 2])
    timed("eval", lambda: (evaluate(lm, data, ecfg, stage="steered", vector=vector, steer_cfg=steer_cfg),
                           evaluate(lm, data, ecfg, stage="healed")),
          tokens=lambda out: sum(r.metrics["n_rows"] for r in out))
    timed("probes", lambda: answer_probes(lm), tokens=lambda out: sum(p.n_tokens for p in out))

    total = sum(t for _, t, _ in timings)
    print(f"\nround on {lm.device}: {len(comps)} completions x {args.max_new_tokens} tokens, kept {len(kept)}, "
          f"{result.n_train} train / {len(result.steps)} steps x {args.epochs} epochs, eval {ecfg.limit or 'all'} "
          f"rows at T = {args.think_tokens}")
    print(f"{'phase':<9} {'seconds':>8} {'share':>6}  throughput")
    for name, secs, tokens in timings:
        unit = "rows/s" if name == "eval" else "tok/s"
        rate = f"{tokens / secs:8.1f} {unit}" if tokens else ""
        print(f"{name:<9} {secs:8.1f} {secs / total:6.1%}  {rate}")
    print(f"{'total':<9} {total:8.1f}   ({total / 60:.2f} min)   peak RSS {peak_rss_gb():.2f} GB")
    if torch.cuda.is_available():
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 1024**3:.1f} GB; "
              f"seed code {SEED_MINUTES_PER_ROUND:.0f} min / this round = {SEED_MINUTES_PER_ROUND * 60 / total:.1f}x")


if __name__ == "__main__":
    main()
