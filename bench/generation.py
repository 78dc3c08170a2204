"""Generation speed on the bundled model, measured side by side in one run.

Prints two ratios (issue 2):
  steered / unsteered time at the same batch   (target <= 1.05)
  32 sequential / one batch of 32, 64 tokens    (target >= 5x)

    .venv/bin/python bench/generation.py [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from steerheal.config import GenerationConfig, SteerConfig
from steerheal.generate import generate
from steerheal.models import load_model
from steerheal.presets import axis_prompts, default_contexts, persona_pair
from steerheal.vectors import extract_vector


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    lm = load_model("bundled")
    vector = extract_vector(lm, persona_pair(), default_contexts()[:32])
    prompts = (axis_prompts() * 2)[:32]
    # EOS suppressed so every run generates exactly the same number of tokens.
    cfg = GenerationConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens, batch_size=32, seed=1)
    steer_cfg = SteerConfig(alpha=2.0)
    print(f"torch threads: {torch.get_num_threads()}, {len(prompts)} prompts x {args.tokens} tokens")

    generate(lm, prompts[:4], cfg)  # warm-up
    plain, steered = [], []
    for _ in range(args.reps):  # interleaved so drift in machine load hits both sides
        plain.append(timed(lambda: generate(lm, prompts, cfg)))
        steered.append(timed(lambda: generate(lm, prompts, cfg, vector, steer_cfg)))
    p, s = statistics.median(plain), statistics.median(steered)
    print(f"batch 32 unsteered: {p:.2f}s ({32 * args.tokens / p:.0f} tok/s)")
    print(f"batch 32 steered:   {s:.2f}s ({32 * args.tokens / s:.0f} tok/s)")
    print(f"RATIO steered/unsteered = {s / p:.3f}  (target <= 1.05)")

    single_cfg = GenerationConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens, batch_size=1, seed=1)
    seq = timed(lambda: [generate(lm, [q], single_cfg) for q in prompts])
    batched = timed(lambda: generate(lm, prompts, cfg))
    print(f"32 sequential: {seq:.2f}s ({32 * args.tokens / seq:.0f} tok/s); one batch of 32: {batched:.2f}s")
    print(f"RATIO sequential/batched = {seq / batched:.2f}x  (target >= 5)")


if __name__ == "__main__":
    main()
