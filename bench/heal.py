"""Heal step cost: the KL barrier (reference forward + full-vocabulary KL) vs plain NLL,
side by side in one run (issue 4 target: ratio <= 1.6).

    .venv/bin/python bench/heal.py
"""

from __future__ import annotations

import resource
import time

from steerheal.config import GenerationConfig, SteerConfig
from steerheal.generate import generate
from steerheal.heal import HealConfig, TrainExample, heal
from steerheal.models import load_model
from steerheal.presets import axis_prompts, default_contexts, persona_pair
from steerheal.vectors import extract_vector


def main() -> None:
    lm = load_model("bundled")
    vector = extract_vector(lm, persona_pair(), default_contexts()[:32])
    comps = generate(lm, axis_prompts()[:24], GenerationConfig(max_new_tokens=64, min_new_tokens=64, seed=0),
                     vector, SteerConfig(alpha=3.0))
    examples = [TrainExample(c.prompt, c.token_ids) for c in comps]
    times = {}
    for reg in ("none", "kl_rev", "none", "kl_rev"):  # interleaved
        model = load_model("bundled")
        cfg = HealConfig(reg=reg, rank=8, lora_alpha=16, epochs=1, batch_size=4, val_fraction=0.0)
        t0 = time.perf_counter()
        res = heal(model, examples, cfg)
        times.setdefault(reg, []).append((time.perf_counter() - t0) / len(res.steps))
    plain, barrier = min(times["none"]), min(times["kl_rev"])
    print(f"{len(examples)} examples x ~{len(comps[0].token_ids)} completion tokens, batch 4, LoRA r 8")
    print(f"plain NLL step: {plain:.2f}s   barrier (kl_rev, rmse) step: {barrier:.2f}s")
    print(f"RATIO barrier/plain = {barrier / plain:.2f}  (target <= 1.6)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
