"""Checks that decide which steered completions are kept (SCIENCE.md section 3).

Each check returns its score, its threshold and a readable reason; a completion is kept
only if every check passes, and a human verdict, when present, overrides the automatic one.
Token loops with low perplexity can slip through: the heal barrier is the second line.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from steerheal.config import SteerConfig, _finite
from steerheal.divergence import summarise_kl, token_kl
from steerheal.errors import SteerhealError
from steerheal.scoring import completion_token_logprobs, perplexity

NARRATION_PATTERNS = (
    r"\bI(?:'m| am) (?:someone|a person|the kind of person|the type of person) who\b",
    r"\bas (?:someone|a person) who\b",
    r"\bbeing someone who\b",
)
REFUSAL_PATTERNS = (
    r"\bas an? (?:AI|artificial intelligence|language model)\b",
    r"\bI(?:'m| am) (?:just |only )?an? (?:AI|language model|assistant)\b",
    r"\bI can(?:not|'t) (?:help|assist) with (?:that|this)\b",
    r"\bI(?:'m| am) (?:sorry|unable)[^.]{0,40}\bI can(?:not|'t)\b",
)


@dataclass(frozen=True)
class FilterConfig:
    max_tail_perplexity: float = 50.0
    tail_fraction: float = 0.25
    max_repetition: float = 0.3
    reject_narration: bool = True
    reject_refusal: bool = True
    max_kl_rmse: float | None = None  # None: the KL summary is shown but does not decide

    def validate(self) -> "FilterConfig":
        if _finite("max_tail_perplexity", self.max_tail_perplexity) <= 1:
            raise SteerhealError("max_tail_perplexity must be > 1.")
        if not 0 < _finite("tail_fraction", self.tail_fraction) <= 1:
            raise SteerhealError("tail_fraction must be in (0, 1].")
        if not 0 < _finite("max_repetition", self.max_repetition) <= 1:
            raise SteerhealError("max_repetition must be in (0, 1].")
        if self.max_kl_rmse is not None and _finite("max_kl_rmse", self.max_kl_rmse) <= 0:
            raise SteerhealError("max_kl_rmse must be > 0.")
        return self


@dataclass
class Check:
    name: str
    score: float
    threshold: float
    passed: bool
    reason: str


@dataclass
class Verdict:
    checks: list[Check]
    kl: dict[str, float] = field(default_factory=dict)
    human: bool | None = None

    @property
    def auto(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def kept(self) -> bool:
        return self.human if self.human is not None else self.auto

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"checks": [asdict(c) for c in self.checks], "kl": self.kl, "auto": self.auto,
                "human": self.human, "kept": self.kept}


def _ngram_share(items: Sequence[str], n: int) -> float:
    grams = [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]
    if len(grams) < 4:
        return 0.0
    return Counter(grams).most_common(1)[0][1] / len(grams)


def repetition_fraction(text: str) -> float:
    """The largest share taken by the most common n-gram, over word and character n-grams, n = 2..4."""
    words = text.lower().split()
    chars = list(re.sub(r"\s+", " ", text.lower()))
    return max([_ngram_share(words, n) for n in (2, 3, 4)] + [_ngram_share(chars, n) for n in (2, 3, 4)])


def _pattern_check(name: str, text: str, patterns: Sequence[str], what: str) -> Check:
    hits = [m.group(0) for p in patterns for m in [re.search(p, text, flags=re.IGNORECASE)] if m]
    return Check(name, float(len(hits)), 0.0, not hits, f"{what}: \u201c{hits[0]}\u201d" if hits else "")


def text_checks(text: str, cfg: FilterConfig) -> list[Check]:
    """The checks that need no model."""
    rep = repetition_fraction(text)
    checks = [Check("repetition", rep, cfg.max_repetition, rep < cfg.max_repetition,
                    f"repetition {rep:.2f} \u2265 {cfg.max_repetition}" if rep >= cfg.max_repetition else "")]
    if cfg.reject_narration:
        checks.append(_pattern_check("narration", text, NARRATION_PATTERNS, "narrates the trait"))
    if cfg.reject_refusal:
        checks.append(_pattern_check("refusal", text, REFUSAL_PATTERNS, "refusal / AI boilerplate"))
    if not text.strip():
        checks.append(Check("empty", 0.0, 1.0, False, "empty completion"))
    return checks


def evaluate_completions(lm, prompts: Sequence[str], completion_ids: Sequence[Sequence[int]], texts: Sequence[str],
                         system: str, cfg: FilterConfig | None = None, vector=None,
                         steer_cfgs: Sequence[SteerConfig] | None = None, batch_size: int = 8) -> list[Verdict]:
    """Run every check. Tail perplexity is under the unsteered (base) model; the per-token KL
    of the steered distribution against base is computed when a vector and each completion's
    steer config are given.

    Work goes in chunks of `batch_size` completions that share a steer config, so at most one
    chunk of full-vocabulary rows is alive at a time (a 262k vocabulary times 512 tokens is
    0.5 GB per completion).
    """
    from dataclasses import replace

    from steerheal.batching import chunks
    from steerheal.steering import RowAlphas, steer

    cfg = (cfg or FilterConfig()).validate()
    with_kl = vector is not None and steer_cfgs is not None
    # completions that differ only in alpha share a pass (each row steered with its own alpha)
    groups: dict[SteerConfig | None, list[int]] = {}
    for i in range(len(texts)):
        groups.setdefault(replace(steer_cfgs[i], alpha=1.0) if with_kl else None, []).append(i)
    verdicts: list[Verdict | None] = [None] * len(texts)
    for sc, members in groups.items():
        for idx in chunks(members, batch_size):
            sub_prompts, sub_ids = [prompts[i] for i in idx], [completion_ids[i] for i in idx]
            base_lp = completion_token_logprobs(lm, sub_prompts, sub_ids, system, batch_size, full=True)
            steered_lp = None
            if sc is not None:
                rows = RowAlphas()
                with steer(lm, vector, sc, row_alphas=rows):
                    steered_lp = completion_token_logprobs(lm, sub_prompts, sub_ids, system, batch_size, full=True,
                                                           row_alphas=rows,
                                                           alphas=[steer_cfgs[i].alpha for i in idx])
            for k, i in enumerate(idx):
                verdicts[i] = _verdict(texts[i], completion_ids[i], base_lp[k],
                                       None if steered_lp is None else steered_lp[k], cfg)
            del base_lp, steered_lp
    return verdicts  # type: ignore[return-value]


def _verdict(text: str, ids: Sequence[int], base_lp: torch.Tensor, steered_lp: torch.Tensor | None,
             cfg: FilterConfig) -> Verdict:
    chosen = base_lp.gather(-1, torch.tensor(list(ids), dtype=torch.long)[:, None]).squeeze(-1) \
        if len(ids) else torch.zeros(0)
    kl = None if steered_lp is None else token_kl(steered_lp, base_lp)
    return verdict_from_scores(text, chosen, kl, cfg)


def verdict_from_scores(text: str, chosen_base_logprobs: torch.Tensor, kl: torch.Tensor | None,
                        cfg: FilterConfig | None = None) -> Verdict:
    """Every check from per-token scores already in hand: the base model's log-probability of
    each token and, when known, each token's KL(steered || base) (decoding with backtracking
    measures both while it generates, so no second pass is needed)."""
    cfg = (cfg or FilterConfig()).validate()
    ppl = perplexity(chosen_base_logprobs, cfg.tail_fraction)
    ok = ppl < cfg.max_tail_perplexity
    checks = [Check("tail_perplexity", ppl, cfg.max_tail_perplexity, bool(ok),
                    "" if ok else f"tail perplexity {ppl:.1f} \u2265 {cfg.max_tail_perplexity:g}")]
    verdict = Verdict(checks + text_checks(text, cfg))
    if kl is not None:
        summary = summarise_kl(kl)
        verdict.kl = summary
        if cfg.max_kl_rmse is not None:
            ok = summary["rmse"] < cfg.max_kl_rmse
            verdict.checks.append(Check("kl_rmse", summary["rmse"], cfg.max_kl_rmse, ok,
                                        "" if ok else f"KL rmse {summary['rmse']:.2f} \u2265 {cfg.max_kl_rmse:g}"))
    return verdict
