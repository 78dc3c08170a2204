"""tinymfv forced-choice eval speed, side by side in one run (issue 3).

  A  reference-style: the protocol as the reference code runs it - HF `generate` for the
     think at batch 8 in file order (each frame its own batch), keeping every step's
     full-vocabulary scores, then the suffix as one forward on the cache `generate` returns
     (no position ids, mask "token != pad"), with logits at every suffix position;
  B  steerheal's: pairs of frames sorted by length in batches of 64; the prefix every prompt
     shares runs once per batch and each vignette's frame-shared part once per pair; one
     reserved KV cache for prompt, think and suffix; logits only at the positions read;
     grouped-query attention without copying key/value heads.
Both give the same numbers (printed); the ratio A/B is the speed-up. Also rows/s at T=128.

    .venv/bin/python bench/eval.py [--data ../shared/tinymfv] [--limit N] [--t128-limit 28]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from steerheal.chat import chat_prompt
from steerheal.evals.tinymfv import (PREFILL, THINK_CLOSE, THINK_OPEN, EvalConfig, evaluate, option_token_ids,
                                     turn_markers, user_message)
from steerheal.evals.tinymfv_data import load_vignettes, stratified_subset
from steerheal.models import load_model


@torch.inference_mode()
def reference_style(lm, rows, think_tokens: int, batch_size: int = 8) -> dict:
    """As the reference code reads it: the suffix on `generate`'s cache with no position ids and
    the mask "token != pad" (what steerheal's default protocol reproduces)."""
    tok = lm.tokenizer
    opt = torch.tensor(option_token_ids(tok))
    end_of_turn, opened = turn_markers(tok)
    suffix = tok(THINK_CLOSE + end_of_turn + opened + PREFILL, add_special_tokens=False).input_ids
    logps = {}
    for reverse in (False, True):
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            prompts = [chat_prompt(tok, user_message(r.text, reverse), None) + THINK_OPEN for r in chunk]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = lm.model.generate(**enc, max_new_tokens=think_tokens, min_new_tokens=think_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True)
            tail = torch.tensor(suffix).expand(len(chunk), -1)
            mask = torch.cat([(out.sequences != tok.pad_token_id).long(), torch.ones_like(tail)], dim=1)
            logits = lm.model(input_ids=tail, attention_mask=mask,
                              past_key_values=out.past_key_values).logits  # every suffix position
            for k, lp in enumerate(torch.log_softmax(logits[:, -1].float(), -1)[:, opt]):
                logps[(s + k, reverse)] = lp
    fwd = torch.stack([logps[(i, False)] for i in range(len(rows))])
    rev = torch.stack([logps[(i, True)] for i in range(len(rows))])
    p = torch.softmax((fwd + rev) / 2, -1).mean(0)
    pmass = (fwd.exp().sum(-1) + rev.exp().sum(-1)) / 2
    return {"auth_nats": math.log(p[3]), "care_nats": math.log(p[0]), "coherence": float(pmass.mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--t128-limit", type=int, default=28)
    args = ap.parse_args()
    lm = load_model("bundled")
    data = load_vignettes(data_dir=args.data)
    rows = stratified_subset(data.rows, args.limit) if args.limit else data.rows
    print(f"{len(rows)} rows ({data.source}), torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    a = reference_style(lm, rows, 16)
    ta = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = evaluate(lm, data, EvalConfig(think_tokens=16, limit=args.limit, batch_size=64)).metrics
    tb = time.perf_counter() - t0
    print(f"A reference-style T=16: {ta:.1f}s ({len(rows) / ta:.2f} rows/s)  auth {a['auth_nats']:.4f} "
          f"care {a['care_nats']:.4f} coherence {a['coherence']:.4f}")
    print(f"B steerheal       T=16: {tb:.1f}s ({len(rows) / tb:.2f} rows/s)  auth {b['auth_nats']:.4f} "
          f"care {b['care_nats']:.4f} coherence {b['coherence']:.4f}")
    print(f"RATIO A/B at T=16 = {ta / tb:.2f}x  (target >= 2; NOTES.md quotes ~108 s for the reference code on 132 rows, on a faster host than some)")
    t0 = time.perf_counter()
    evaluate(lm, data, EvalConfig(think_tokens=128, limit=args.t128_limit, batch_size=64))
    tc = time.perf_counter() - t0
    print(f"B steerheal T=128 on {args.t128_limit} rows: {tc:.1f}s ({args.t128_limit / tc:.2f} rows/s)")


if __name__ == "__main__":
    main()
