"""Heal: distil kept steered completions into a fresh LoRA, with a KL barrier (SCIENCE.md 4).

    L = NLL(completion | unsteered prompt) + lambda_r * relu(D - tau),
    D = agg_t KL_t,  KL_t = KL(student || reference) over the full vocabulary (reverse KL;
    `kl_fwd` swaps the arguments), agg in mean | rmse | p95 | max,
    lambda_r = lambda * (1 + r) ** p.
Log-softmax is computed only at completion positions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from steerheal.bake import activate, adapter_names, add_adapter, merge, reference
from steerheal.batching import chunks, pad_rows, position_ids_for
from steerheal.chat import chat_prompt
from steerheal.config import DEFAULT_SYSTEM_PROMPT, _finite
from steerheal.divergence import AGGREGATES, aggregate, token_kl
from steerheal.errors import SteerhealError
from steerheal.models import LoadedModel, final_hidden, project_logits

REGS = ("none", "kl_rev", "kl_fwd")
MIN_EXAMPLES = 4


@dataclass(frozen=True)
class HealConfig:
    rank: int = 16
    lora_alpha: int = 32
    depth: tuple[float, float] = (0.2, 0.8)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    epochs: int = 2
    batch_size: int = 4
    grad_accum: int = 1
    val_fraction: float = 1 / 8
    reg: str = "kl_rev"
    agg: str = "rmse"
    tau: float = 1.0
    lam: float = 0.3
    lam_power: float = 0.0
    ref: str = "base"
    seed: int = 42

    def validate(self) -> "HealConfig":
        if self.reg not in REGS:
            raise SteerhealError(f"Unknown regulariser {self.reg!r}: use one of {', '.join(REGS)}.")
        if self.agg not in AGGREGATES:
            raise SteerhealError(f"Unknown KL aggregate {self.agg!r}: use one of {', '.join(AGGREGATES)}.")
        if self.ref not in ("base", "prev"):
            raise SteerhealError(f"Unknown reference {self.ref!r}: use base or prev.")
        if _finite("tau", self.tau) < 0:
            raise SteerhealError("tau must be >= 0.")
        if _finite("lambda", self.lam) < 0:
            raise SteerhealError("lambda must be >= 0.")
        _finite("lambda power", self.lam_power)
        if _finite("lr", self.lr) <= 0:
            raise SteerhealError("The learning rate must be > 0.")
        for name in ("rank", "lora_alpha", "epochs", "batch_size", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SteerhealError(f"{name} must be a positive integer, got {value!r}.")
        lo, hi = self.depth
        if not 0 <= lo < hi <= 1:
            raise SteerhealError("The LoRA depth band must satisfy 0 <= start < end <= 1.")
        if not 0 <= self.val_fraction < 1:
            raise SteerhealError("val_fraction must be in [0, 1).")
        return self

    def lambda_at(self, round_: int) -> float:
        return self.lam * (1 + round_) ** self.lam_power


@dataclass
class TrainExample:
    prompt: str  # the unsteered user prompt
    completion_ids: list[int]  # the kept steered completion


@dataclass
class HealResult:
    adapter: str
    steps: list[dict] = field(default_factory=list)
    val_nll_before: float | None = None
    val_nll_after: float | None = None
    n_train: int = 0
    n_val: int = 0


def _encode(lm: LoadedModel, examples: Sequence[TrainExample], system: str):
    tok = lm.tokenizer
    eos = tok.eos_token_id
    encoded = []
    for ex in examples:
        prompt_ids = tok(chat_prompt(tok, ex.prompt, system), add_special_tokens=False).input_ids
        completion = list(ex.completion_ids) + ([eos] if eos is not None else [])
        encoded.append((prompt_ids, completion))
    return encoded


def _batch_tensors(lm: LoadedModel, batch):
    """Right-padded ids, mask, and the (row, position) pairs that predict completion tokens."""
    dev = lm.device
    ids, mask = pad_rows([p + c for p, c in batch], lm.tokenizer.pad_token_id, dev, side="right")
    rows, positions, targets, lengths = [], [], [], []
    for r, (p, c) in enumerate(batch):
        seq = p + c
        rows += [r] * len(c)
        positions += list(range(len(p) - 1, len(seq) - 1))
        targets += c
        lengths.append(len(c))
    return (ids, mask, torch.tensor(rows, device=dev), torch.tensor(positions, device=dev),
            torch.tensor(targets, device=dev), lengths)


def _completion_logp(lm: LoadedModel, ids, mask, rows, positions) -> torch.Tensor:
    hidden = final_hidden(lm, ids, mask, position_ids_for(mask))
    return torch.log_softmax(project_logits(lm, hidden[rows, positions]).float(), dim=-1)


def batch_loss(lm: LoadedModel, batch, cfg: HealConfig, lam: float, training: str) -> dict:
    ids, mask, rows, positions, targets, lengths = _batch_tensors(lm, batch)
    logp = _completion_logp(lm, ids, mask, rows, positions)
    nll = -logp.gather(-1, targets[:, None]).squeeze(-1).mean()
    out = {"nll": nll, "loss": nll, "divergence": 0.0, "fired": False}
    if cfg.reg == "none":
        return out
    with torch.no_grad(), reference(lm, cfg.ref, training):
        ref_logp = _completion_logp(lm, ids, mask, rows, positions)
    kl = token_kl(logp, ref_logp) if cfg.reg == "kl_rev" else token_kl(ref_logp, logp)
    per_seq = torch.stack([aggregate(part, cfg.agg) for part in torch.split(kl, lengths)])
    barrier = lam * torch.relu(per_seq - cfg.tau).mean()
    out.update(loss=nll + barrier, divergence=float(per_seq.detach().mean()), fired=bool((per_seq.detach() > cfg.tau).any()))
    return out


def heal(lm: LoadedModel, examples: Sequence[TrainExample], cfg: HealConfig, round_: int = 0,
         system: str = DEFAULT_SYSTEM_PROMPT, progress: Callable[[int, int, dict], None] | None = None,
         should_stop: Callable[[], bool] | None = None) -> HealResult:
    """Train this round's adapter on the examples; leaves it merged into the weights."""
    from transformers import get_cosine_schedule_with_warmup

    cfg.validate()
    examples = [e for e in examples if e.completion_ids]
    if len(examples) < MIN_EXAMPLES:
        raise SteerhealError(
            f"Only {len(examples)} kept completions to train on; heal needs at least {MIN_EXAMPLES}. "
            "Generate more completions, loosen the filters, or approve some by hand."
        )
    rng = random.Random(cfg.seed + round_)
    order = list(range(len(examples)))
    rng.shuffle(order)
    n_val = int(len(examples) * cfg.val_fraction)
    encoded = _encode(lm, [examples[i] for i in order], system)
    val, train = encoded[:n_val], encoded[n_val:]
    torch.manual_seed(cfg.seed + round_)
    name = add_adapter(lm, round_, cfg.rank, cfg.lora_alpha, cfg.depth, fold_previous=cfg.ref == "prev")
    params = [p for p in lm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(train) / cfg.batch_size) / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_fraction * total), total)
    lam = cfg.lambda_at(round_)
    result = HealResult(adapter=name, n_train=len(train), n_val=len(val))
    result.val_nll_before = _val_nll(lm, val, cfg, name)
    step = 0
    for epoch in range(cfg.epochs):
        batches = list(chunks(train, cfg.batch_size))
        random.Random(cfg.seed + round_ * 1000 + epoch).shuffle(batches)
        for start in range(0, len(batches), cfg.grad_accum):
            group = batches[start : start + cfg.grad_accum]
            stats = {"loss": 0.0, "nll": 0.0, "divergence": 0.0, "fired": False}
            for batch in group:
                out = batch_loss(lm, batch, cfg, lam, name)
                (out["loss"] / len(group)).backward()
                stats["loss"] += float(out["loss"].detach()) / len(group)
                stats["nll"] += float(out["nll"].detach()) / len(group)
                stats["divergence"] += out["divergence"] / len(group)
                stats["fired"] |= out["fired"]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **stats}
            result.steps.append(record)
            if progress:
                progress(step, total, record)
            if should_stop and should_stop():
                raise InterruptedError("heal cancelled")
    result.val_nll_after = _val_nll(lm, val, cfg, name)
    activate(lm, adapter_names(lm))  # freeze everything again
    lm.model.eval()
    merge(lm)
    return result


@torch.no_grad()
def _val_nll(lm: LoadedModel, val, cfg: HealConfig, name: str) -> float | None:
    if not val:
        return None
    total, count = 0.0, 0
    for batch in chunks(val, cfg.batch_size):
        ids, mask, rows, positions, targets, _ = _batch_tensors(lm, batch)
        logp = _completion_logp(lm, ids, mask, rows, positions)
        total += float(-logp.gather(-1, targets[:, None]).sum())
        count += len(targets)
    return total / count
