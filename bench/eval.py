"""tinymfv forced-choice eval speed, side by side in one run (issue 3).

  A  reference-style (bench/reference_eval.py): the protocol as the reference code runs it -
     HF `generate` for the think at batch 8 in file order (each frame its own batch), keeping
     every step's full-vocabulary scores, then the suffix as one forward on the cache
     `generate` returns (no position ids, mask "token != pad"), with logits at every suffix
     position;
  B  steerheal's (`evaluate` with EvalConfig defaults): pairs of frames sorted by length in
     even batches of at most 32 frames, two batches in flight on two threads; the prefix every
     prompt shares runs once per batch and each vignette's frame-shared part once per pair;
     the prefill in chunks of ~1024 tokens; one reserved KV cache for prompt, think and
     suffix; logits only at the positions read; grouped-query attention without copying
     key/value heads.
The rows go in slices of 32 (file order, so the reference's batches of 8 are unchanged); each
slice is timed under A and under B back to back, alternating which goes first, so both see
the same host (a shared 2-core VM here drifts by +-10% within minutes). Both give the same
numbers over all rows (printed); the ratio of the summed times is the speed-up. Also rows/s
at T = 128.

    .venv/bin/python bench/eval.py [--data ../shared/tinymfv] [--limit N] [--t128-limit 28]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from reference_eval import reference_logprobs, reference_metrics
from steerheal.evals.tinymfv import EvalConfig, evaluate, summarise
from steerheal.evals.tinymfv_data import load_vignettes, stratified_subset
from steerheal.models import load_model

SLICE = 32  # rows per side-by-side slice: a multiple of the reference's batch of 8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--t128-limit", type=int, default=28, help="rows for the T = 128 rate (0 = skip)")
    args = ap.parse_args()
    lm = load_model("bundled")
    data = load_vignettes(data_dir=args.data)
    rows = stratified_subset(data.rows, args.limit) if args.limit else data.rows
    print(f"{len(rows)} rows ({data.source}), torch threads {torch.get_num_threads()}")
    ta = tb = 0.0
    fwd, rev, ours = [], [], []
    starts = list(range(0, len(rows), SLICE))
    if len(starts) > 1 and len(rows) - starts[-1] < SLICE // 4:
        starts.pop()  # a short tail joins the slice before it
    for k, start in enumerate(starts):
        part = rows[start:starts[k + 1]] if k + 1 < len(starts) else rows[start:]
        for which in ("AB" if k % 2 == 0 else "BA"):
            t0 = time.perf_counter()
            if which == "A":
                f, r = reference_logprobs(lm, part, 16)
                fwd.append(f)
                rev.append(r)
                ta += (sa := time.perf_counter() - t0)
            else:
                ours += evaluate(lm, replace(data, rows=part), EvalConfig(think_tokens=16)).rows
                tb += (sb := time.perf_counter() - t0)
        print(f"  rows {start}-{start + len(part) - 1}: A {sa:.1f}s  B {sb:.1f}s  ratio {sa / sb:.2f}", flush=True)
    a = reference_metrics(torch.cat(fwd), torch.cat(rev))
    b = summarise(ours, rows)
    print(f"A reference-style T=16: {ta:.1f}s ({len(rows) / ta:.2f} rows/s)  auth {a['auth_nats']:.4f} "
          f"care {a['care_nats']:.4f} coherence {a['coherence']:.4f}")
    print(f"B steerheal       T=16: {tb:.1f}s ({len(rows) / tb:.2f} rows/s)  auth {b['auth_nats']:.4f} "
          f"care {b['care_nats']:.4f} coherence {b['coherence']:.4f}")
    print(f"RATIO A/B at T=16 = {ta / tb:.2f}x  (target >= 2; NOTES.md quotes ~108 s for the reference code "
          "on 132 rows, on a faster host than this one)")
    if args.t128_limit < 1:
        return
    t0 = time.perf_counter()
    evaluate(lm, data, EvalConfig(think_tokens=128, limit=args.t128_limit))
    tc = time.perf_counter() - t0
    print(f"B steerheal T=128 on {args.t128_limit} rows: {tc:.1f}s ({args.t128_limit / tc:.2f} rows/s)")


if __name__ == "__main__":
    main()
