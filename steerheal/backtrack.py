"""Steered decoding that watches its own KL to the base model and replays incoherent spans.

While a batch decodes with steering, every `window` steps one forward of the *unsteered* model
over the tokens just fed (one pass of `window` positions, not one pass per token) gives the
base distribution at each generated position, so each token's KL(steered || base) is known a
few steps after it was sampled. When a row's window of `window` tokens has a mean KL above
`threshold`, its tokens are rolled back and decoded again with alpha scaled by `scale` (again
on a repeat), at most `max_backtracks` times per completion; each replay is recorded.

Rolling back one row of a batch does not touch the others: the rolled-back positions stay in
the KV caches but are masked out ("holes"), and every new position gets the position id it
would have had without them, so the row reads exactly as if the bad span had never been written.
The steered and base caches are fed the same tokens in the same columns, so one mask serves both.
When nothing is replayed the steered rows decode exactly as `model.generate` does.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from steerheal.batching import pad_rows, position_ids_for
from steerheal.config import SteerConfig, _finite
from steerheal.divergence import token_kl
from steerheal.errors import SteerhealError
from steerheal.models import LoadedModel, final_hidden, project_logits, unwrapped_model
from steerheal.steering import RowAlphas, steer


@dataclass(frozen=True)
class BacktrackConfig:
    """threshold: mean per-token KL(steered || base) in nats over a window that triggers a replay;
    window: tokens per check (and per base pass); scale: alpha multiplier for a replayed window
    (compounding when the same completion replays again); max_backtracks: per completion."""

    threshold: float = 1.0
    window: int = 8
    scale: float = 0.5
    max_backtracks: int = 2

    def validate(self, max_new_tokens: int | None = None) -> "BacktrackConfig":
        if _finite("backtrack threshold", self.threshold) <= 0:
            raise SteerhealError(f"The backtrack threshold must be a KL above 0 nats, got {self.threshold}.")
        if not isinstance(self.window, int) or self.window < 1:
            raise SteerhealError(f"The backtrack window must be a positive number of tokens, got {self.window!r}.")
        if max_new_tokens is not None and self.window > max_new_tokens:
            raise SteerhealError(f"The backtrack window ({self.window} tokens) is longer than the generation "
                                 f"({max_new_tokens} tokens): use a window of at most {max_new_tokens}.")
        if not 0 <= _finite("backtrack scale", self.scale) < 1:
            raise SteerhealError(f"The backtrack scale must be in [0, 1) (0.5 halves alpha), got {self.scale}.")
        if not isinstance(self.max_backtracks, int) or self.max_backtracks < 0:
            raise SteerhealError(f"max_backtracks must be a non-negative integer, got {self.max_backtracks!r}.")
        return self


@dataclass
class Backtrack:
    position: int  # index of the first rolled-back token in the completion
    rolled_back: int  # tokens undone (the window, plus any decoded after it before the check)
    window_kl: float  # the window's mean KL that triggered the replay
    alpha: float  # the strength the replay decodes with

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecodedRow:
    token_ids: list[int]
    finished: bool  # ended with EOS
    token_kl: list[float]  # KL(steered || base) of each kept token
    base_logprobs: list[float]  # log p_base of each kept token (tail perplexity without another pass)
    backtracks: list[Backtrack] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)  # the strength each kept token was decoded with


Chooser = Callable[[torch.Tensor], torch.Tensor]  # float32 logits (B, V) -> token ids (B,)
StepFn = Callable[[list[list[int]], list[list[Backtrack]]], None]


class _Row:
    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.tokens: list[int] = []
        self.made_by: list[int] = []  # the cache column whose output gave each token's distribution
        self.kl: list[float] = []
        self.base_logprobs: list[float] = []
        self.alphas: list[float] = []
        self.window_start = 0
        self.backtracks: list[Backtrack] = []
        self.factor = 1.0  # alpha multiplier of the window being replayed
        self.replay_until = 0  # tokens before this index decode with `factor`
        self.finished = False  # sampled EOS
        self.refeed: int | None = None  # after a rollback: the token to feed again before sampling

    def alpha_for(self, index: int, decay: float) -> float:
        factor = self.factor if index < self.replay_until else 1.0
        return self.alpha * factor * (decay ** index if decay != 1.0 else 1.0)


def decode(lm: LoadedModel, prompt_rows: Sequence[Sequence[int]], vector, steer_cfg: SteerConfig,
           alphas: Sequence[float], cfg: BacktrackConfig, choose: Chooser, max_new_tokens: int,
           min_new_tokens: int = 0, eos: Sequence[int] = (), pad: int = 0,
           should_stop: Callable[[], bool] | None = None, on_step: StepFn | None = None,
           base_prefill_memo: dict | None = None) -> list[DecodedRow]:
    """Decode one batch of tokenised prompts (each row with its own alpha), steered, replaying
    windows whose mean KL to base passes `cfg.threshold`. `choose` picks the next tokens from
    float32 logits for the whole batch each step (rows that are not sampling discard theirs, so
    the random stream stays that of `model.generate`). `on_step(tokens, backtracks)` sees every step.
    `base_prefill_memo` (a dict the caller keeps) remembers the unsteered model's pass over these
    prompts, which does not depend on alpha: a dose curve decodes the same prompts at every alpha."""
    cfg = cfg.validate(max_new_tokens)
    steer_cfg = steer_cfg.validate()
    hook_cfg = SteerConfig(**{**steer_cfg.__dict__, "decay": 1.0})  # decay is applied per row here
    eos_set = {int(e) for e in eos}
    eos_tensor = torch.tensor(sorted(eos_set), device=lm.device) if eos_set else None
    ids, mask = pad_rows(prompt_rows, pad, lm.device, side="left")
    n_rows, prompt_width = ids.shape
    history = ids.clone()  # the token fed at each cache column
    rows = [_Row(float(a)) for a in alphas]
    model_config = unwrapped_model(lm).config
    steered_cache, base_cache = DynamicCache(config=model_config), DynamicCache(config=model_config)
    row_alphas = RowAlphas()
    fed: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tokens, positions) of the columns since the last base pass
    # Every row feeds one token per step into the same cache column, so the tokens sampled at one
    # step share the column that produced them: one (column, steered log-probs, token index per
    # row) per step waits here for the base pass, and is scored for the whole batch at once.
    pending: list[tuple[int, torch.Tensor, list[int | None]]] = []
    producing_col = prompt_width - 1

    def steered_forward(input_ids, pos, index_of_next: list[int]) -> torch.Tensor:
        row_alphas.set([r.alpha_for(i, steer_cfg.decay) for r, i in zip(rows, index_of_next)])
        hidden = final_hidden(lm, input_ids, mask, pos, past_key_values=steered_cache, use_cache=True)
        return project_logits(lm, hidden[:, -1, :]).float()

    def base_forward(input_ids, pos) -> torch.Tensor:
        row_alphas.set([0.0] * n_rows)
        hidden = final_hidden(lm, input_ids, mask, pos, past_key_values=base_cache, use_cache=True)
        return torch.log_softmax(project_logits(lm, hidden).float(), dim=-1)  # (B, width, V)

    def sampling(r: _Row) -> bool:
        return not r.finished and len(r.tokens) < max_new_tokens

    def busy() -> bool:
        return any(sampling(r) or r.refeed is not None for r in rows)

    with steer(lm, vector, hook_cfg, row_alphas=row_alphas), torch.inference_mode():
        positions = position_ids_for(mask)
        logits = steered_forward(ids, positions, [0] * n_rows)
        memo_key = tuple(tuple(r) for r in prompt_rows)
        if base_prefill_memo is not None and memo_key in base_prefill_memo:
            cached, first_lp = base_prefill_memo[memo_key]
            base_cache = copy.deepcopy(cached)
        else:
            first_lp = base_forward(ids, positions)[:, -1]
            if base_prefill_memo is not None:
                base_prefill_memo.clear()  # one batch of prompts at a time: memory stays one prefill
                base_prefill_memo[memo_key] = (copy.deepcopy(base_cache), first_lp)
        base_lp = {prompt_width - 1: first_lp}  # column -> base log-probs (B, V)
        col = prompt_width  # the next cache column
        while busy():
            if should_stop is not None and should_stop():
                raise InterruptedError("cancelled")
            scores = logits
            if eos_tensor is not None and min_new_tokens:
                short = [k for k, r in enumerate(rows) if len(r.tokens) < min_new_tokens]
                if short:
                    scores = scores.clone()
                    scores[torch.tensor(short)[:, None], eos_tensor[None, :]] = -float("inf")
            chosen = choose(scores).tolist()
            feed: list[int] = []
            sampled: list[int | None] = [None] * n_rows
            for k, r in enumerate(rows):
                if r.refeed is not None:  # rolled back: feed the span's predecessor again, sample next step
                    token, r.refeed = r.refeed, None
                elif sampling(r):
                    token = int(chosen[k])
                    if token in eos_set:
                        r.finished, token = True, pad
                    else:
                        sampled[k] = len(r.tokens)
                        r.alphas.append(r.alpha_for(len(r.tokens), steer_cfg.decay))
                        r.made_by.append(producing_col)
                        r.tokens.append(token)
                else:
                    token = pad
                feed.append(token)
            if any(i is not None for i in sampled):
                pending.append((producing_col, torch.log_softmax(logits, dim=-1), sampled))
            if on_step is not None:
                on_step([list(r.tokens) for r in rows], [list(r.backtracks) for r in rows])
            if busy():  # someone needs the next distribution: feed this step's tokens
                step_ids = torch.tensor(feed, device=lm.device)[:, None]
                step_pos = mask.sum(dim=1, keepdim=True)  # real tokens so far: holes are not counted
                mask = torch.cat([mask, mask.new_ones((n_rows, 1))], dim=1)
                history = torch.cat([history, step_ids], dim=1)
                logits = steered_forward(step_ids, step_pos, [len(r.tokens) for r in rows])
                producing_col = col
                fed.append((step_ids, step_pos))
                col += 1
                if len(fed) < cfg.window:
                    continue
            if fed:  # one unsteered pass over the columns fed since the last one
                out = base_forward(torch.cat([t for t, _ in fed], dim=1), torch.cat([p for _, p in fed], dim=1))
                first = col - len(fed)
                base_lp.update({first + j: out[:, j] for j in range(len(fed))})
                fed = []
            _score(rows, pending, base_lp)
            pending = []
            _check(rows, cfg, mask, history, sampling)
            base_lp = {c: v for c, v in base_lp.items() if c == col - 1}
    return [DecodedRow(token_ids=r.tokens, finished=r.finished, token_kl=r.kl, base_logprobs=r.base_logprobs,
                       backtracks=r.backtracks, alphas=r.alphas) for r in rows]


def _score(rows: list[_Row], pending: list[tuple[int, torch.Tensor, list[int | None]]],
           base_lp: dict[int, torch.Tensor]) -> None:
    """Each waiting step's KL(steered || base) and base log-probability, for the whole batch in
    one go, appended to the rows that sampled at that step (in token order)."""
    for col, steered, sampled in pending:
        base = base_lp[col]
        kl = token_kl(steered, base).clamp_min(0.0).tolist()
        for k, i in enumerate(sampled):
            if i is not None:
                r = rows[k]
                r.kl.append(kl[k])
                r.base_logprobs.append(float(base[k, r.tokens[i]]))


def _check(rows: list[_Row], cfg: BacktrackConfig, mask: torch.Tensor, history: torch.Tensor,
           sampling: Callable[[_Row], bool]) -> None:
    """Judge each complete window (and a last partial one once the row has stopped sampling);
    roll back a row whose window's mean KL is over the threshold."""
    for k, r in enumerate(rows):
        while len(r.kl) > r.window_start:
            known = len(r.kl) - r.window_start
            if known < cfg.window and (sampling(r) or r.refeed is not None):
                break
            span = r.kl[r.window_start : r.window_start + cfg.window]
            mean_kl = sum(span) / len(span)
            if mean_kl > cfg.threshold and len(r.backtracks) < cfg.max_backtracks:
                _roll_back(r, k, mean_kl, cfg, mask, history)
                break
            r.window_start += len(span)


def _roll_back(r: _Row, k: int, mean_kl: float, cfg: BacktrackConfig, mask: torch.Tensor,
               history: torch.Tensor) -> None:
    """Undo the row's tokens from its window's start: mask out the column that produced the
    window's first token and every column after it; that column's token is fed again, at the
    replay's lower strength, before sampling resumes."""
    start = r.window_start
    first_col = r.made_by[start]
    mask[k, first_col:] = 0
    r.factor = cfg.scale ** (len(r.backtracks) + 1)
    r.replay_until = start + cfg.window
    r.backtracks.append(Backtrack(position=start, rolled_back=len(r.tokens) - start, window_kl=round(mean_kl, 4),
                                  alpha=r.alpha * r.factor))
    del r.tokens[start:], r.made_by[start:], r.kl[start:], r.base_logprobs[start:], r.alphas[start:]
    r.finished = False
    r.refeed = int(history[k, first_col])
