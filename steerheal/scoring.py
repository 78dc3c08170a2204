"""Per-token log-probabilities of given completions under a model (teacher forcing)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from steerheal.batching import pad_rows, position_ids_for
from steerheal.chat import chat_prompt
from steerheal.models import LoadedModel, final_hidden, project_logits


def completion_token_logprobs(lm: LoadedModel, prompts: Sequence[str], completion_ids: Sequence[Sequence[int]],
                              system: str | None, batch_size: int = 8, full: bool = False,
                              row_alphas=None, alphas: Sequence[float] | None = None) -> list[torch.Tensor]:
    """log p(token_t | prompt, tokens_<t) for each completion token, one tensor per row
    (with full=True: the whole log-softmax at each completion position, shape (n, V)).
    Under a `steer(..., row_alphas=R)` block, pass R and one alpha per row to steer each row
    with its own strength.

    Only completion positions go through log-softmax (a full-vocabulary log-softmax over
    every position exhausts memory on large vocabularies).
    """
    tok = lm.tokenizer
    rows = []
    for prompt, ids in zip(prompts, completion_ids):
        prompt_ids = tok(chat_prompt(tok, prompt, system), add_special_tokens=False).input_ids
        rows.append((prompt_ids, list(ids)))
    out: list[torch.Tensor] = []
    pad = tok.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            if row_alphas is not None:
                row_alphas.set(alphas[start : start + batch_size])
            # right padding: completions line up after their prompts
            input_ids, mask = pad_rows([p + c for p, c in batch], pad, lm.device, side="right")
            hidden = final_hidden(lm, input_ids, mask, position_ids_for(mask))
            for r, (p, c) in enumerate(batch):
                if not c:
                    out.append(torch.zeros((0, lm.model.config.get_text_config().vocab_size) if full else 0))
                    continue
                positions = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=lm.device)
                logp = torch.log_softmax(project_logits(lm, hidden[r, positions]).float(), dim=-1)
                if full:
                    out.append(logp.cpu())
                    continue
                targets = torch.tensor(c, device=lm.device)
                out.append(logp.gather(-1, targets[:, None]).squeeze(-1).cpu())
    return out


def perplexity(logprobs: torch.Tensor, tail_fraction: float = 1.0) -> float:
    """exp(-mean log p) over the last `tail_fraction` of the tokens."""
    n = len(logprobs)
    if n == 0:
        return float("nan")
    k = max(1, math.ceil(n * tail_fraction))
    return float(torch.exp(-logprobs[-k:].mean()))
