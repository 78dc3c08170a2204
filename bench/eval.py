"""tinymfv forced-choice eval speed, side by side in one run (issue 3).

  A  a straightforward pipeline like the reference's: HF generate for the think (batch 8,
     file order), then a fresh forward over prompt + think + suffix with full logits;
  B  steerheal's: length-sorted batches, one KV cache for prompt, think and suffix, and
     logits only at the positions read.
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
def straightforward(lm, rows, think_tokens: int, batch_size: int = 8) -> dict:
    tok = lm.tokenizer
    opt = torch.tensor(option_token_ids(tok))
    end_of_turn, opened = turn_markers(tok)
    suffix = THINK_CLOSE + end_of_turn + opened + PREFILL
    prompts = [chat_prompt(tok, user_message(r.text, rev), None) + THINK_OPEN for r in rows for rev in (False, True)]
    logps = []
    for s in range(0, len(prompts), batch_size):
        enc = tok(prompts[s:s + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        out = lm.model.generate(**enc, max_new_tokens=think_tokens, min_new_tokens=think_tokens, do_sample=False,
                                pad_token_id=tok.pad_token_id)
        texts = [p + tok.decode(o[enc.input_ids.shape[1]:], skip_special_tokens=True) + suffix
                 for p, o in zip(prompts[s:s + batch_size], out)]
        enc2 = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        pos = (enc2.attention_mask.cumsum(-1) - 1).clamp_min(0)
        logits = lm.model(**enc2, position_ids=pos).logits  # every position, as a plain forward does
        logps.append(torch.log_softmax(logits[:, -1].float(), -1)[:, opt])
    lp = torch.cat(logps)
    p = torch.softmax((lp[0::2] + lp[1::2]) / 2, -1).mean(0)
    return {"auth_nats": math.log(p[3]), "care_nats": math.log(p[0]), "coherence": float(lp.exp().sum(-1).mean())}


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
    a = straightforward(lm, rows, 16)
    ta = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = evaluate(lm, data, EvalConfig(think_tokens=16, limit=args.limit, batch_size=32)).metrics
    tb = time.perf_counter() - t0
    print(f"A straightforward T=16: {ta:.1f}s ({len(rows) / ta:.2f} rows/s)  auth {a['auth_nats']:.4f} "
          f"care {a['care_nats']:.4f} coherence {a['coherence']:.4f}")
    print(f"B steerheal       T=16: {tb:.1f}s ({len(rows) / tb:.2f} rows/s)  auth {b['auth_nats']:.4f} "
          f"care {b['care_nats']:.4f} coherence {b['coherence']:.4f}")
    print(f"RATIO A/B at T=16 = {ta / tb:.2f}x  (target >= 2; the reference itself took ~108 s for 132 rows here)")
    t0 = time.perf_counter()
    evaluate(lm, data, EvalConfig(think_tokens=128, limit=args.t128_limit, batch_size=32))
    tc = time.perf_counter() - t0
    print(f"B steerheal T=128 on {args.t128_limit} rows: {tc:.1f}s ({args.t128_limit / tc:.2f} rows/s)")


if __name__ == "__main__":
    main()
