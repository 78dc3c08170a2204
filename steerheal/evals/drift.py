"""Offline incoherence: the evaluated model's own text on neutral prompts, scored against the base.

On a fixed set of neutral prompts (bundled, unrelated to any axis, held out from contexts,
generation prompts and probes), the model under evaluation writes a greedy continuation of
fixed length (EOS suppressed). On those tokens we score:
- per-token KL(model || base) over the full vocabulary, aggregated as mean, rmse, p95 and the
  share of tokens above 1 nat (the usual "crash" line);
- the base model's NLL of the text minus its NLL of its own greedy continuation of the same
  prompt (nats per token: how much harder the text is for the base model to read);
- repetition (the filter's n-gram share).
The headline is the KL rmse (see HEADLINE): exactly 0 for the base model, and an aggregate
that, like the heal barrier's, lets a short token loop count instead of averaging it away.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from transformers import DynamicCache

from steerheal.attention import folded_gqa
from steerheal.batching import chunks, pad_rows, position_ids_for
from steerheal.chat import chat_prompt
from steerheal.config import DEFAULT_SYSTEM_PROMPT, SteerConfig
from steerheal.divergence import aggregate, token_kl
from steerheal.errors import SteerhealError
from steerheal.filters import repetition_fraction
from steerheal.evals.tinymfv import eos_ids
from steerheal.models import LoadedModel, final_hidden, project_logits, unwrapped_model
from steerheal.presets import _asset_text, read_lines
from steerheal.scoring import completion_token_logprobs
from steerheal.stats import mean_interval
from steerheal.steering import steer

HEADLINE = "kl_rmse"
CRASH_NATS = 1.0
METRICS = ("kl_mean", "kl_rmse", "kl_p95", "share_over_1", "nll_excess", "repetition")
ProgressFn = Callable[[int, int], None]
BaseView = Callable[[], AbstractContextManager]


def drift_prompts() -> list[str]:
    return read_lines(_asset_text("drift_prompts.txt"))


@dataclass(frozen=True)
class DriftConfig:
    max_new_tokens: int = 32
    n_prompts: int | None = 32  # the first N of the 40 bundled prompts (None: all)
    # Decoding reads every weight once per step whatever the batch, so all 40 prompts decode as
    # one batch (measured on 2 cores: 3x faster than batches of 16); the model's and the base's
    # full-vocabulary log-probs for the batch are held on the CPU.
    batch_size: int = 64

    def validate(self) -> "DriftConfig":
        if not isinstance(self.max_new_tokens, int) or not 2 <= self.max_new_tokens <= 2048:
            raise SteerhealError(f"drift max_new_tokens must be an integer in 2..2048, got {self.max_new_tokens!r}.")
        if self.n_prompts is not None and (not isinstance(self.n_prompts, int) or self.n_prompts < 2):
            raise SteerhealError(f"drift n_prompts must be at least 2 or unset, got {self.n_prompts!r}.")
        return self

    def prompts(self) -> list[str]:
        return drift_prompts()[: self.n_prompts]


@dataclass
class DriftResult:
    """Per-prompt metrics (`rows`, in prompt order) and their means with intervals."""

    metrics: dict[str, float]
    intervals: dict[str, dict]
    rows: list[dict]
    meta: dict = field(default_factory=dict)

    @property
    def headline(self) -> float:
        return self.metrics[HEADLINE]


def greedy_with_logprobs(lm: LoadedModel, prompts: Sequence[str], system: str, n_tokens: int,
                         should_stop: Callable[[], bool] | None = None) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy continuations of exactly n_tokens (EOS never chosen), with the model's full
    log-softmax at each step: (ids per prompt, (batch, n_tokens, V)). The distribution is read
    while decoding, so scoring the model's own text needs no second pass."""
    tok = lm.tokenizer
    rows = [tok(chat_prompt(tok, p, system), add_special_tokens=False).input_ids for p in prompts]
    ids, mask = pad_rows(rows, tok.pad_token_id, lm.device, side="left")
    positions = position_ids_for(mask)
    cache = DynamicCache(config=unwrapped_model(lm).config)
    banned = torch.tensor(eos_ids(lm), device=lm.device)
    out_ids, out_lp = [], []
    with torch.inference_mode():
        hidden = final_hidden(lm, ids, mask, positions, past_key_values=cache, use_cache=True)
        for step in range(n_tokens):
            if should_stop is not None and should_stop():
                raise InterruptedError("cancelled")
            logp = torch.log_softmax(project_logits(lm, hidden[:, -1, :].contiguous()).float(), dim=-1)
            choice = logp.index_fill(-1, banned, -float("inf")).argmax(-1)
            out_ids.append(choice)
            out_lp.append(logp.cpu())
            if step + 1 == n_tokens:
                break
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            positions = positions[:, -1:] + 1
            hidden = final_hidden(lm, choice[:, None], mask, positions, past_key_values=cache, use_cache=True)
    chosen = torch.stack(out_ids, dim=1).tolist()
    return chosen, torch.stack(out_lp, dim=1)


def base_reference_nll(base_lm: LoadedModel, prompts: Sequence[str], cfg: DriftConfig,
                       base_view: BaseView = nullcontext, should_stop=None) -> list[float]:
    """The base model's per-token NLL of its own greedy continuation of each prompt."""
    out: list[float] = []
    with base_view():
        for batch in chunks(list(prompts), cfg.batch_size):
            ids, logp = greedy_with_logprobs(base_lm, batch, DEFAULT_SYSTEM_PROMPT, cfg.max_new_tokens, should_stop)
            chosen = logp.gather(-1, torch.tensor(ids)[:, :, None]).squeeze(-1)
            out.extend(float(-row.mean()) for row in chosen)
    return out


def evaluate_drift(lm: LoadedModel, cfg: DriftConfig | None = None, *, stage: str = "base",
                   base_view: BaseView = nullcontext, base_lm: LoadedModel | None = None, base_nll: Sequence[float] | None = None,
                   vector=None, steer_cfg: SteerConfig | None = None, persona_prompt: str | None = None,
                   progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None) -> DriftResult:
    """Score `lm` as it stands (with steering or a persona if given) against the base model:
    `base_lm` (default `lm`) inside `base_view()` (e.g. `lm` with its adapters disabled).
    `base_nll` (the base's NLL of its own continuations) is computed when not given."""
    cfg = (cfg or DriftConfig()).validate()
    if (vector is None) != (steer_cfg is None):
        raise SteerhealError("A steered drift eval needs both a vector and an alpha.")
    prompts = cfg.prompts()
    t0 = time.time()
    base_lm = base_lm or lm
    if base_nll is None:
        base_nll = base_reference_nll(base_lm, prompts, cfg, base_view, should_stop)
    system = persona_prompt or DEFAULT_SYSTEM_PROMPT
    steering = (lambda: steer(lm, vector, steer_cfg)) if vector is not None else nullcontext
    rows: list[dict] = []
    batches = list(chunks(list(range(len(prompts))), cfg.batch_size))
    for done, idx in enumerate(batches, start=1):
        batch_prompts = [prompts[i] for i in idx]
        with steering():
            batch_ids, model_lp = greedy_with_logprobs(lm, batch_prompts, system, cfg.max_new_tokens, should_stop)
        with base_view(), folded_gqa(base_lm.model):
            base_lp = completion_token_logprobs(base_lm, batch_prompts, batch_ids, DEFAULT_SYSTEM_PROMPT,
                                                batch_size=cfg.batch_size, full=True)
        for k, (i, ids_i, b_lp) in enumerate(zip(idx, batch_ids, base_lp)):
            kl = token_kl(model_lp[k], b_lp).clamp_min(0.0)
            chosen = b_lp.gather(-1, torch.tensor(ids_i)[:, None]).squeeze(-1)
            text = lm.tokenizer.decode(ids_i, skip_special_tokens=True)
            rows.append(dict(prompt=prompts[i], text=text, n_tokens=len(ids_i),
                             kl_mean=float(aggregate(kl, "mean")), kl_rmse=float(aggregate(kl, "rmse")),
                             kl_p95=float(aggregate(kl, "p95")), share_over_1=float((kl > CRASH_NATS).float().mean()),
                             nll_excess=float(-chosen.mean()) - base_nll[i], repetition=repetition_fraction(text)))
        if progress is not None:
            progress(done, len(batches))
    intervals = {m: mean_interval([r[m] for r in rows]).to_dict() for m in METRICS}
    meta = {"stage": stage, "model_id": lm.model_id, "seconds": round(time.time() - t0, 2), "headline": HEADLINE,
            "max_new_tokens": cfg.max_new_tokens, "n_prompts": len(prompts), "persona_prompt": persona_prompt,
            "steer": None if steer_cfg is None else asdict(steer_cfg), "base_nll": list(base_nll)}
    return DriftResult(metrics={m: intervals[m]["value"] for m in METRICS}, intervals=intervals, rows=rows, meta=meta)
