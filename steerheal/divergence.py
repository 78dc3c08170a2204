"""Per-token KL divergence and its aggregates over token positions (SCIENCE.md section 4).

The aggregate decides what the heal barrier sees: `mean` dilutes a short token loop,
`rmse` = sqrt(mean KL_t^2 + 1e-8) lets it through, `p95` and `max` look at the tail.
"""

from __future__ import annotations

import torch

from steerheal.errors import SteerhealError

AGGREGATES = ("mean", "rmse", "p95", "max")


def token_kl(logp_student: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """KL(student || ref) at each position: sum_v p_s (log p_s - log p_ref). Inputs (..., V) log-probs."""
    return (logp_student.exp() * (logp_student - logp_ref)).sum(-1)


def aggregate(kl: torch.Tensor, how: str) -> torch.Tensor:
    """Collapse per-position KL values (1-D) to one number."""
    if how not in AGGREGATES:
        raise SteerhealError(f"Unknown KL aggregate {how!r}: use one of {', '.join(AGGREGATES)}.")
    if kl.numel() == 0:
        return kl.new_zeros(())
    if how == "mean":
        return kl.mean()
    if how == "rmse":
        return torch.sqrt((kl ** 2).mean() + 1e-8)
    if how == "p95":
        return torch.quantile(kl.float(), 0.95).to(kl.dtype)
    return kl.max()


def summarise_kl(kl: torch.Tensor) -> dict[str, float]:
    return {how: float(aggregate(kl, how)) for how in AGGREGATES}
