"""Issue 18's measurements on the bundled model, all from one run (ratios side by side).

    python bench/dose.py [--quick]

1. Backtracking overhead: plain steered generation (model.generate) against generation with
   backtracking when nothing is replayed (threshold never reached), same batch of 16 prompts x
   64 tokens (EOS suppressed), alpha 2; target <= 1.5x. Also the two other ways of getting the
   base distribution at every token: an unsteered pass after every step (window 1), and "the same
   forward with the hooks off" (the batch doubled: base rows beside the steered ones), priced by
   timing one decoding step at batch 32 against batch 16.
2. A dose curve of 8 alphas on 16 prompts x 32 tokens (with the axis score on 16 dev items and
   the offline incoherence on 8 neutral prompts): its wall time (target < 2 minutes).
3. Calibration to a KL budget (p95 per-token KL = 1 nat) and to a kept share (50%): the alpha
   found, the measure at it and the number of evaluations (target: within tolerance, <= ~8).
4. The remedies at two strengths: plain steering, decay, cosine gate and backtrack-and-replay
   at the same alpha on the same prompts and seed: the share of completions the filters keep, the
   trait score of the kept ones (the base model's per-token log-probability of the text with the
   positive persona as system prompt minus with the negative one: mean and 95% interval over
   kept completions) and the mean per-token KL to base.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steerheal.backtrack import BacktrackConfig, decode  # noqa: E402
from steerheal.config import GenerationConfig, SteerConfig, persona_system_prompt  # noqa: E402
from steerheal.dose import DoseConfig, DoseMeter, DoseTarget, calibrate, dose_curve  # noqa: E402
from steerheal.evals.axis import bundled_items, select  # noqa: E402
from steerheal.filters import evaluate_completions  # noqa: E402
from steerheal.generate import eos_token_ids, generate  # noqa: E402
from steerheal.models import load_model  # noqa: E402
from steerheal.presets import default_contexts, generation_prompts, persona_pair  # noqa: E402
from steerheal.scoring import completion_token_logprobs  # noqa: E402
from steerheal.stats import mean_interval  # noqa: E402
from steerheal.vectors import extract_vector  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def overhead(lm, vector, prompts: list[str], reps: int) -> None:
    gen = GenerationConfig(max_new_tokens=64, min_new_tokens=64, batch_size=16, seed=3)
    sc = SteerConfig(alpha=2.0)
    generate(lm, prompts[:2], replace(gen, max_new_tokens=4, min_new_tokens=4), vector, sc)  # warm-up
    never = BacktrackConfig(threshold=1e6, window=8)
    rows = {"plain": [], "backtracking (window 8)": [], "pass after every step (window 1)": []}
    same = True
    for _ in range(reps):
        plain, t_plain = timed(lambda: generate(lm, prompts, gen, vector, sc))
        watched, t_bt = timed(lambda: generate(lm, prompts, gen, vector, sc, backtrack=never))
        _, t_step = timed(lambda: generate(lm, prompts, gen, vector, sc, backtrack=replace(never, window=1)))
        same &= [c.token_ids for c in plain] == [c.token_ids for c in watched]
        for key, t in zip(rows, (t_plain, t_bt, t_step)):
            rows[key].append(t)
    best = {k: min(v) for k, v in rows.items()}
    print(f"\n1. Backtracking overhead, {len(prompts)} prompts x 64 tokens, batch 16, alpha 2, nothing replayed "
          f"(best of {reps}); tokens identical to plain: {same}")
    for key, t in best.items():
        print(f"   {key:34s} {t:6.2f} s   ratio to plain {t / best['plain']:.2f}")
    # "Same forward, hooks off": one decoding step at twice the batch against one at the batch.
    tok = lm.tokenizer
    row = tok("Hello there, how are you today?", add_special_tokens=False).input_ids

    def step_time(batch: int) -> float:
        times = []
        for _ in range(3):
            def one():
                decode(lm, [row] * batch, vector, sc, [2.0] * batch, BacktrackConfig(window=1, max_backtracks=0),
                       lambda s: s.argmax(-1), 2, eos=eos_token_ids(lm), pad=tok.pad_token_id)
            times.append(timed(one)[1])
        return min(times)
    t16, t32 = step_time(16), step_time(32)
    print(f"   one decoding step at batch 32 / at batch 16 (the base rows carried in the same forward): "
          f"{t32 / t16:.2f} per step, and the prompts' prefill doubles as well")


def curve(lm, vector, prompts, items) -> None:
    meter = DoseMeter(lm, vector, prompts, DoseConfig(n_prompts=16, max_new_tokens=32, axis_items=16,
                                                      drift_prompts=8, drift_tokens=32), items=items)
    points, seconds = timed(lambda: dose_curve(meter, (-4, -2, 0, 1, 2, 4, 8, 16)))
    print(f"\n2. Dose curve: 8 alphas x 16 prompts x 32 tokens (+ 16 dev axis items, 8 neutral prompts) in "
          f"{seconds:.0f} s (target < 120 s)")
    print(f"   {'alpha':>6} {'KL mean':>8} {'KL p95':>7} {'>1 nat':>7} {'kept':>5} {'axis (dev)':>22} {'incoh.':>7}")
    for p in points:
        a = p.axis
        print(f"   {p.alpha:6g} {p.kl_mean:8.3f} {p.kl_p95:7.3f} {p.kl_share_over_1:7.1%} {p.kept_share:5.0%} "
              f"{a['mean']:+8.3f} [{a['ci_low']:+.2f}, {a['ci_high']:+.2f}] {p.incoherence['value']:7.3f}")


def calibration(lm, vector, prompts) -> None:
    print("\n3. Calibration (sign +, 16 prompts x 32 tokens per evaluation)")
    for target in (DoseTarget(kind="kl", value=1.0), DoseTarget(kind="kept", value=0.5)):
        meter = DoseMeter(lm, vector, prompts, DoseConfig(n_prompts=16, max_new_tokens=32, axis_items=0,
                                                          drift_prompts=0))
        found, seconds = timed(lambda: calibrate(meter, target))
        print(f"   {target.label:40s} alpha {found.alpha:7.3f}  measure {found.measure:.3f} (tolerance "
              f"±{target.tolerance_abs():.2f}, {'reached' if found.reached else 'NOT reached'})  "
              f"{found.evaluations} evaluations, {seconds:.0f} s")


def trait_scores(lm, pair, prompts, ids) -> list[float]:
    """Per completion: mean log p(token) with the positive persona as system prompt minus with the
    negative one, under the base model."""
    pos = completion_token_logprobs(lm, prompts, ids, persona_system_prompt(pair.pos))
    neg = completion_token_logprobs(lm, prompts, ids, persona_system_prompt(pair.neg))
    return [float(p.mean() - n.mean()) if len(p) else float("nan") for p, n in zip(pos, neg)]


def remedies(lm, vector, prompts, alphas, n_tokens: int) -> None:
    pair = persona_pair()
    gen = GenerationConfig(max_new_tokens=n_tokens, seed=7, batch_size=16)
    print(f"\n4. Remedies at the same alpha: {len(prompts)} prompts x {n_tokens} tokens, seed 7, default filters")
    print(f"   {'alpha':>5} {'remedy':34s} {'kept':>6} {'trait score of kept [95%]':>30} {'KL/token':>9} {'s':>5}")
    base_trait = mean_interval(trait_scores(lm, pair, prompts, [c.token_ids for c in generate(lm, prompts, gen)]))
    print(f"   {'0':>5} {'unsteered (reference)':34s} {'':>6} {base_trait.value:+10.3f} "
          f"[{base_trait.low:+.3f}, {base_trait.high:+.3f}]")
    for alpha in alphas:
        variants = [("plain", SteerConfig(alpha=alpha), None),
                    ("decay 0.97 per token", SteerConfig(alpha=alpha, decay=0.97), None),
                    ("cosine gate 0.1 (median cos ~0.09)", SteerConfig(alpha=alpha, cos_gate=0.1), None),
                    ("backtrack (1 nat over 8 tokens, x0.5)", SteerConfig(alpha=alpha),
                     BacktrackConfig(threshold=1.0, window=8, scale=0.5, max_backtracks=2))]
        for name, sc, bt in variants:
            comps, seconds = timed(lambda: generate(lm, prompts, gen, vector, sc,
                                                    backtrack=bt or BacktrackConfig(threshold=1e6, window=8,
                                                                                    max_backtracks=0)))
            verdicts = evaluate_completions(lm, prompts, [c.token_ids for c in comps], [c.text for c in comps],
                                            gen.system_prompt)
            kept = [c for c, v in zip(comps, verdicts) if v.kept]
            kl = sum(sum(c.token_kl) for c in comps) / max(1, sum(c.n_tokens for c in comps))
            trait = mean_interval(trait_scores(lm, pair, [c.prompt for c in kept], [c.token_ids for c in kept]))
            replays = sum(len(c.backtracks) for c in comps)
            label = name + (f" ({replays} replays)" if bt else "")
            print(f"   {alpha:5g} {label:34s} {len(kept) / len(comps):6.0%} {trait.value:+10.3f} "
                  f"[{trait.low:+.3f}, {trait.high:+.3f}] {kl:9.3f} {seconds:5.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer prompts and one repetition (a smoke test)")
    parser.add_argument("--parts", default="1,2,3,4", help="which of the four measurements to run (e.g. 1,2)")
    args = parser.parse_args()
    parts = {int(p) for p in args.parts.split(",")}
    torch.manual_seed(0)
    lm = load_model("bundled")
    vector = extract_vector(lm, persona_pair(), default_contexts())
    prompts = generation_prompts()
    items = select(bundled_items("care-over-authority"), "dev")
    if 1 in parts:
        overhead(lm, vector, prompts[:4 if args.quick else 16], reps=1 if args.quick else 2)
    if 2 in parts and not args.quick:
        curve(lm, vector, prompts, items)
    if 3 in parts and not args.quick:
        calibration(lm, vector, prompts)
    if 4 in parts:
        remedies(lm, vector, prompts[: 4 if args.quick else 32], (4.0, 8.0), 16 if args.quick else 48)


if __name__ == "__main__":
    main()
