"""The reference-style tinymfv pipeline, for side-by-side timings (bench/eval.py, bench/round.py).

It runs the protocol as the reference code does - HF `generate` for the think at batch 8 in
file order (each frame its own batch), keeping every step's full-vocabulary scores, then the
suffix as one forward on the cache `generate` returns (no position ids, mask "token != pad"),
with logits at every suffix position - and gives the same numbers as steerheal's default
protocol.
"""

from __future__ import annotations

import math

import torch

from steerheal.chat import chat_prompt
from steerheal.evals.tinymfv import PREFILL, THINK_CLOSE, THINK_OPEN, option_token_ids, turn_markers, user_message


def reference_style(lm, rows, think_tokens: int, batch_size: int = 8) -> dict:
    """auth_nats, care_nats and coherence of `rows`, computed the reference's way."""
    return reference_metrics(*reference_logprobs(lm, rows, think_tokens, batch_size))


def reference_metrics(fwd: torch.Tensor, rev: torch.Tensor) -> dict:
    p = torch.softmax((fwd + rev) / 2, -1).mean(0)
    pmass = (fwd.exp().sum(-1) + rev.exp().sum(-1)) / 2
    return {"auth_nats": math.log(p[3]), "care_nats": math.log(p[0]), "coherence": float(pmass.mean())}


@torch.inference_mode()
def reference_logprobs(lm, rows, think_tokens: int, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the seven options' log-probs in the forward and the reverse frame, as the
    reference code reads them: the suffix on `generate`'s cache with no position ids and the
    mask "token != pad" (what steerheal's default protocol reproduces)."""
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
    return fwd, rev
