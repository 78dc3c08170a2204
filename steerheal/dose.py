"""The dose: what a strength does, measured, and the strength that hits a target.

A *dose point* measures steering at one alpha on a small fixed set of the pair's generation
prompts: the steered model writes a sampled completion of each (seeded, so every alpha sees the
same random numbers), and while it writes, the unsteered model's distribution at each position
gives the per-token KL(steered || base) on the steered model's own tokens (steerheal.backtrack,
with replays off). From those: KL mean, p95 and the share of tokens above 1 nat, and the share of
completions the filters keep. A full point also scores the axis items (dev split: runs report
the held-out eval split, so the dose is never tuned on it) and the offline incoherence (the
headline of steerheal.evals.drift: greedy continuations of neutral prompts, KL rmse per prompt
against the same model unsteered, mean over prompts with a bootstrap interval).

*Calibration* bisects alpha (sign given) to a target: a KL budget (p95 per-token KL = X nats) or
a kept share (S of completions pass the filters). It brackets the target by doubling from a
start, then narrows by interpolation (log-log for KL, which grows like a power of alpha; linear
for the kept share), within a budget of evaluations.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from steerheal.backtrack import BacktrackConfig, decode
from steerheal.chat import chat_prompt
from steerheal.config import DEFAULT_SYSTEM_PROMPT, GenerationConfig, SteerConfig, _finite
from steerheal.divergence import aggregate
from steerheal.errors import SteerhealError
from steerheal.filters import FilterConfig, verdict_from_scores
from steerheal.models import LoadedModel
from steerheal.stats import mean_interval

DEFAULT_GRID = (-4.0, -2.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
TARGET_KINDS = {"kl": "p95 per-token KL (nats)", "kept": "share of completions kept"}
DEFAULT_TOLERANCE = {"kl": 0.1, "kept": 0.1}  # kl: relative (within 10%); kept: absolute
CRASH_NATS = 1.0
PointFn = Callable[[list["DosePoint"]], None]


@dataclass(frozen=True)
class DoseConfig:
    layers: str = "0.45-0.55"
    n_prompts: int = 16  # the first N generation prompts of the pair
    max_new_tokens: int = 32
    seed: int = 0
    batch_size: int = 16
    axis_items: int = 16  # dev-split items scored at each grid alpha (0: none)
    drift_prompts: int = 8  # neutral prompts for the offline incoherence at each grid alpha (0: none)
    drift_tokens: int = 32
    filters: FilterConfig = field(default_factory=FilterConfig)

    def validate(self) -> "DoseConfig":
        for name, low in (("n_prompts", 1), ("max_new_tokens", 2), ("batch_size", 1), ("axis_items", 0),
                          ("drift_prompts", 0), ("drift_tokens", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise SteerhealError(f"dose {name} must be an integer of at least {low}, got {value!r}.")
        if self.drift_prompts == 1:
            raise SteerhealError("dose drift_prompts must be 0 (off) or at least 2.")
        self.filters.validate()
        return self


@dataclass(frozen=True)
class DoseTarget:
    """kind "kl": p95 per-token KL to base = value (nats); kind "kept": share of completions the
    filters keep = value. tolerance: relative for kl (0.1 = within 10%), absolute for kept."""

    kind: str
    value: float
    sign: int = 1
    tolerance: float | None = None
    max_evaluations: int = 8
    start: float = 1.0  # |alpha| of the first evaluation
    max_alpha: float = 256.0

    def validate(self) -> "DoseTarget":
        if self.kind not in TARGET_KINDS:
            raise SteerhealError(f"Unknown dose target {self.kind!r}: use kl (a KL budget) or kept (a kept share).")
        value = _finite(f"target {self.kind}", self.value)
        if self.kind == "kl" and value <= 0:
            raise SteerhealError(f"A KL budget must be above 0 nats, got {value:g}.")
        if self.kind == "kept" and not 0 < value < 1:
            raise SteerhealError(f"A kept share must be between 0 and 1 (0.5 = half the completions), got {value:g}.")
        if self.sign not in (1, -1):
            raise SteerhealError(f"The calibration sign must be +1 or -1, got {self.sign!r}.")
        if self.tolerance is not None and not _finite("tolerance", self.tolerance) > 0:
            raise SteerhealError("The calibration tolerance must be above 0.")
        if not isinstance(self.max_evaluations, int) or not 2 <= self.max_evaluations <= 64:
            raise SteerhealError("max_evaluations must be an integer in 2..64.")
        if not 0 < _finite("start", self.start) <= _finite("max_alpha", self.max_alpha):
            raise SteerhealError("The calibration start must be above 0 and at most max_alpha.")
        return self

    @property
    def label(self) -> str:
        return f"{TARGET_KINDS[self.kind]} = {self.value:g}"

    def tolerance_abs(self) -> float:
        if self.kind == "kl":
            return (self.tolerance or DEFAULT_TOLERANCE["kl"]) * self.value
        return self.tolerance or DEFAULT_TOLERANCE["kept"]

    def reached(self, measure: float) -> bool:
        return abs(measure - self.value) <= self.tolerance_abs() + 1e-12

    def too_weak(self, measure: float) -> bool:
        """Whether a point with this measure needs more strength to reach the target."""
        return measure < self.value if self.kind == "kl" else measure > self.value


@dataclass
class DosePoint:
    alpha: float
    kl_mean: float
    kl_p95: float
    kl_share_over_1: float
    kept_share: float
    n_completions: int
    n_tokens: int
    axis: dict | None = None  # mean, ci_low, ci_high, n (dev items)
    incoherence: dict | None = None  # KL rmse on neutral prompts: value, low, high, n
    seconds: float = 0.0
    grid: bool = True  # False: an evaluation the calibration added between grid points

    def measure(self, kind: str) -> float:
        return self.kl_p95 if kind == "kl" else self.kept_share

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Calibration:
    alpha: float
    measure: float
    target: DoseTarget
    evaluations: int
    reached: bool
    points: list[DosePoint]

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "measure": self.measure, "target": asdict(self.target),
                "evaluations": self.evaluations, "reached": self.reached,
                "points": [p.to_dict() for p in self.points]}


class DoseMeter:
    """Measures dose points for one model, vector and layer band; remembers each alpha."""

    def __init__(self, lm: LoadedModel, vector, prompts: Sequence[str], cfg: DoseConfig | None = None,
                 items=None, should_stop: Callable[[], bool] | None = None):
        self.lm, self.vector, self.cfg = lm, vector, (cfg or DoseConfig()).validate()
        if not prompts:
            raise SteerhealError("The dose needs at least one prompt.")
        self.prompts = list(prompts)[: self.cfg.n_prompts]
        self.items = list(items or [])[: self.cfg.axis_items]
        self.should_stop = should_stop
        self._points: dict[float, DosePoint] = {}
        self._base_prefill: dict = {}  # the unsteered pass over the prompts, the same at every alpha
        steer_cfg = SteerConfig(alpha=0.0, layers=self.cfg.layers).validate()
        from steerheal.config import LayerBand

        LayerBand(steer_cfg.layers).resolve(lm.n_layers)
        tok = lm.tokenizer
        gen = GenerationConfig()
        self._rows = [tok(chat_prompt(tok, p, gen.system_prompt), add_special_tokens=False).input_ids
                      for p in self.prompts]

    @property
    def evaluations(self) -> int:
        return len(self._points)

    def point(self, alpha: float, full: bool = True, grid: bool = True) -> DosePoint:
        alpha = float(alpha)
        known = self._points.get(alpha)
        if known is not None and (not full or known.axis is not None or not self.items):
            return known
        t0 = time.time()
        point = known or self._decode_point(alpha, with_drift=full and bool(self.cfg.drift_prompts))
        point.grid = grid or (known.grid if known else False)
        if full:
            self._full(point)
        point.seconds = round(point.seconds + time.time() - t0, 2)
        self._points[alpha] = point
        return point

    def _decode_point(self, alpha: float, with_drift: bool) -> DosePoint:
        """One decoding pass at alpha: the pair's prompts sampled (KL and the filters' verdicts),
        and with_drift the neutral prompts greedily, EOS never chosen (the offline incoherence: KL
        rmse per prompt against the unsteered model, mean over prompts). Both kinds of row share
        the batch when they have the same length: a decoding step costs about the same for 16 rows
        as for 24 on a CPU, so the incoherence comes nearly free."""
        from steerheal.generate import eos_token_ids, sampler

        cfg = self.cfg
        gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed).validate()
        steer_cfg = SteerConfig(alpha=alpha, layers=cfg.layers)
        tok = self.lm.tokenizer
        eos = eos_token_ids(self.lm)
        draw = sampler(gen)
        n_gen = len(self._rows)
        drift_rows = self._drift_rows() if with_drift else []
        jobs = [(r, "gen") for r in self._rows] + [(r, "drift") for r in drift_rows]
        together = cfg.drift_tokens == cfg.max_new_tokens
        groups = [jobs] if together else [jobs[:n_gen], jobs[n_gen:]]
        torch.manual_seed(cfg.seed)
        kls: list[float] = []
        drift_rmse: list[float] = []
        kept = 0
        for group in groups:
            for start in range(0, len(group), cfg.batch_size + (len(drift_rows) if together else 0)):
                batch = group[start : start + cfg.batch_size + (len(drift_rows) if together else 0)]
                if not batch:
                    continue
                greedy = torch.tensor([kind == "drift" for _, kind in batch])
                n_tokens = cfg.max_new_tokens if batch[0][1] == "gen" else cfg.drift_tokens

                def choose(scores, greedy=greedy):
                    picked = draw(scores)
                    if bool(greedy.any()):
                        plain = scores[greedy].clone()
                        plain[:, eos] = -float("inf")
                        picked[greedy] = plain.argmax(-1)
                    return picked

                watch = BacktrackConfig(window=n_tokens, max_backtracks=0)  # score every token, replay none
                decoded = decode(self.lm, [r for r, _ in batch], self.vector, steer_cfg, [alpha] * len(batch), watch,
                                 choose, n_tokens, eos=eos, pad=tok.pad_token_id, should_stop=self.should_stop,
                                 base_prefill_memo=self._base_prefill)
                for (_, kind), d in zip(batch, decoded):
                    if kind == "drift":
                        drift_rmse.append(float(aggregate(torch.tensor(d.token_kl), "rmse")))
                        continue
                    text = tok.decode(d.token_ids, skip_special_tokens=True)
                    verdict = verdict_from_scores(text, torch.tensor(d.base_logprobs), torch.tensor(d.token_kl),
                                                  cfg.filters)
                    kept += verdict.kept
                    kls.extend(d.token_kl)
        kl = torch.tensor(kls) if kls else torch.zeros(0)
        point = DosePoint(alpha=alpha, kl_mean=float(aggregate(kl, "mean")), kl_p95=float(aggregate(kl, "p95")),
                          kl_share_over_1=float((kl > CRASH_NATS).float().mean()) if kls else 0.0,
                          kept_share=kept / n_gen, n_completions=n_gen, n_tokens=len(kls))
        if drift_rmse:
            point.incoherence = mean_interval(drift_rmse).to_dict()
        return point

    def _drift_rows(self) -> list[list[int]]:
        from steerheal.evals.drift import drift_prompts

        tok = self.lm.tokenizer
        return [tok(chat_prompt(tok, p, DEFAULT_SYSTEM_PROMPT), add_special_tokens=False).input_ids
                for p in drift_prompts()[: self.cfg.drift_prompts]]

    def _full(self, point: DosePoint) -> None:
        from steerheal.evals.axis import evaluate_axis

        steer_cfg = SteerConfig(alpha=point.alpha, layers=self.cfg.layers)
        if self.items and point.axis is None:
            result = evaluate_axis(self.lm, self.items, stage="dose", vector=self.vector, steer_cfg=steer_cfg)
            point.axis = {"mean": result.mean, "ci_low": result.ci_low, "ci_high": result.ci_high, "n": result.n}
        if self.cfg.drift_prompts and point.incoherence is None:  # measured light before (calibration)
            point.incoherence = self._decode_point(point.alpha, with_drift=True).incoherence

    def points(self) -> list[DosePoint]:
        return sorted(self._points.values(), key=lambda p: p.alpha)


def dev_items(pair: str | None, items_path: str | None = None) -> list:
    """The axis items a dose point scores: an items file, else the preset pair's bundled items
    (none for a custom pair without a file), their dev split when they have one (runs report the
    held-out eval split, so the dose is never tuned on it)."""
    from steerheal.evals.axis import bundled_items, has_bundled_items, load_items, select

    if items_path:
        items = load_items(items_path)
    elif pair and has_bundled_items(pair):
        items = bundled_items(pair)
    else:
        return []
    return select(items, "dev") if any(i.split == "dev" for i in items) else items


def dose_curve(meter: DoseMeter, alphas: Sequence[float] = DEFAULT_GRID, on_point: PointFn | None = None
               ) -> list[DosePoint]:
    """Every alpha of the grid, fully measured, in order; `on_point` sees the curve so far."""
    alphas = check_grid(alphas)
    for alpha in alphas:
        meter.point(alpha, full=True)
        if on_point is not None:
            on_point(meter.points())
    return meter.points()


def check_grid(alphas: Sequence[float]) -> list[float]:
    try:
        grid = [float(a) for a in alphas]
    except (TypeError, ValueError):
        raise SteerhealError(f"The alphas must be numbers, got {list(alphas)!r}.") from None
    if not grid or len(grid) > 64:
        raise SteerhealError("Give between 1 and 64 alphas for the dose curve.")
    for a in grid:
        if not math.isfinite(a) or abs(a) > 1000:
            raise SteerhealError(f"alpha {a} is not a usable strength: give finite alphas with |alpha| <= 1000.")
    return sorted(set(grid))


def calibrate(meter: DoseMeter, target: DoseTarget, grid: Sequence[float] | None = None,
              on_point: PointFn | None = None) -> Calibration:
    """The alpha (of the target's sign) whose measure is within tolerance of the target.

    Without a grid: evaluate at start, doubling until the target is crossed, then narrow. With a
    grid (already measured or not): the bracket comes from the grid's points of that sign; a grid
    that never crosses the target is an error naming its closest alpha. Evaluations count the
    alphas measured for the calibration (grid points included when they were measured for it)."""
    target = target.validate()
    kind = target.kind
    first = meter.evaluations

    def measure(alpha: float, on_grid: bool = False) -> float:
        if meter.should_stop is not None and meter.should_stop():
            raise InterruptedError("cancelled")
        value = meter.point(alpha, full=False, grid=on_grid).measure(kind)
        if on_point is not None:
            on_point(meter.points())
        return value

    weak: tuple[float, float | None] = (0.0, 0.0 if kind == "kl" else None)  # alpha 0 adds nothing
    strong: tuple[float, float] | None = None

    def judge(alpha: float, on_grid: bool = False) -> tuple[float, bool]:
        """Measure at alpha; narrow the bracket; say whether the target is reached there."""
        nonlocal weak, strong
        m = measure(alpha, on_grid)
        if target.reached(m):
            return m, True
        if target.too_weak(m):
            weak = (alpha, m)
        else:
            strong = (alpha, m)
        return m, False

    if grid is not None:
        side = sorted((a for a in check_grid(grid) if a * target.sign > 0), key=abs)
        if not side:
            raise SteerhealError(f"The grid has no alphas of sign {target.sign:+d}: add some to calibrate.")
        for a in side:
            m, hit = judge(a, on_grid=True)
            if hit:
                return _done(meter, target, a, m, first, True)
            if strong is not None:
                break
        if strong is None:
            closest = min(side, key=lambda a: abs(meter.point(a, full=False).measure(kind) - target.value))
            m = meter.point(closest, full=False).measure(kind)
            raise SteerhealError(f"The grid never reaches {target.label}: the closest is alpha {closest:g} with "
                                 f"{m:.3g}. Add {'larger' if target.too_weak(m) else 'smaller'} alphas.")
    else:
        a = target.sign * target.start
        while True:
            m, hit = judge(a)
            if hit:
                return _done(meter, target, a, m, first, True)
            if strong is not None:
                break
            if abs(a) * 2 > target.max_alpha or meter.evaluations - first >= target.max_evaluations:
                raise SteerhealError(f"No alpha up to {abs(a):g} reaches {target.label}: the closest is alpha "
                                     f"{a:g} with {m:.3g}.")
            a *= 2
    while meter.evaluations - first < target.max_evaluations:
        a = _next_alpha(weak, strong, target)
        m, hit = judge(a)
        if hit:
            return _done(meter, target, a, m, first, True)
    best = min((p for p in meter.points() if p.alpha * target.sign > 0),
               key=lambda p: abs(p.measure(kind) - target.value))
    return _done(meter, target, best.alpha, best.measure(kind), first, False)


def _next_alpha(weak: tuple[float, float | None], strong: tuple[float, float], target: DoseTarget) -> float:
    """Between the bracket's ends: interpolated where the measure allows (log-log for KL, which
    grows like a power of alpha; linear for the kept share), never within 10% of the bracket of
    either end, so a bad guess still shrinks it; else the middle."""
    (a0, m0), (a1, m1) = weak, strong
    lo, hi = sorted((a0, a1))
    guard = 0.1 * (hi - lo)
    guess = (a0 + a1) / 2
    if m0 is not None and m1 != m0:
        if target.kind == "kl" and m0 > 0 and m1 > 0 and a0 != 0:
            t = (math.log(target.value) - math.log(m0)) / (math.log(m1) - math.log(m0))
            guess = math.copysign(math.exp(math.log(abs(a0)) + t * (math.log(abs(a1)) - math.log(abs(a0)))), a1)
        else:
            guess = a0 + (target.value - m0) / (m1 - m0) * (a1 - a0)
    return min(max(guess, lo + guard), hi - guard)


def _done(meter: DoseMeter, target: DoseTarget, alpha: float, measure: float, first: int, reached: bool
          ) -> Calibration:
    return Calibration(alpha=alpha, measure=measure, target=target, evaluations=meter.evaluations - first,
                       reached=reached, points=meter.points())
