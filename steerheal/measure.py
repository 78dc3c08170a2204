"""Every instrument a run measures each stage with, stored as each finishes (SCIENCE.md 6, 6b).

A stage is one model condition: base, prompted (positive persona as system message), random
(a random vector of the same norms), steered (round r's vector at the middle alpha) or healed
(round r's baked model). Each stage gets tinymfv (when the run asks for it), the axis eval
(when the pair has items) and the offline incoherence; results already stored are skipped, so
a killed run resumes inside a stage's instruments.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

from steerheal import bake
from steerheal.config import DEFAULT_SYSTEM_PROMPT, LayerBand, ModelSpec, SteerConfig
from steerheal.evals.axis import evaluate_axis
from steerheal.evals.drift import DriftConfig, evaluate_drift
from steerheal.evals.tinymfv import EvalConfig, evaluate
from steerheal.evals.tinymfv_data import load_vignettes
from steerheal.faults import crash_point
from steerheal.models import LoadedModel, load_model
from steerheal.presets import default_contexts
from steerheal.run_config import RunConfig
from steerheal.store import Store
from steerheal.vectors import SteeringVector, absorption, mean_last_token_states

Progress = Callable[[str, dict], None]


def _eval_row(run_id: int, round_: int, stage: str, result) -> dict:
    m = result.metrics
    return dict(run_id=run_id, round=round_, stage=stage, auth_nats=m["auth_nats"], care_nats=m["care_nats"],
                coherence=m["coherence"], top1_acc=m["top1_acc"],
                metrics={k: v for k, v in m.items()}, rows=[r.__dict__ for r in result.rows], meta=result.meta)


class Instruments:
    """Measures stages of one run on its model; the base reference is the model with every
    round adapter off, or a second copy of the base when earlier rounds were folded for good."""

    def __init__(self, store: Store, run_id: int, cfg: RunConfig, lm: LoadedModel, say: Progress,
                 should_stop: Callable[[], bool] | None = None):
        self.store, self.run_id, self.cfg, self.lm, self.say = store, run_id, cfg, lm, say
        self.should_stop = should_stop
        self.tinymfv = cfg.tinymfv_mode(lm.model_id) != "off"
        self.data = load_vignettes(data_dir=cfg.data_dir) if self.tinymfv else None
        limit = cfg.tinymfv_limit(lm.model_id)
        self.eval_cfg = EvalConfig(think_tokens=cfg.think_tokens, limit=limit, subset_seed=cfg.seed)
        self.items = cfg.axis_items_for_run()
        self.drift_cfg = DriftConfig(max_new_tokens=cfg.drift_tokens, n_prompts=cfg.drift_prompts)
        self._base_copy: LoadedModel | None = None
        self._base_states = None  # the base's mean states over the absorption contexts (the base never changes)

    # the base model ---------------------------------------------------------
    def _folded(self) -> bool:
        return self.cfg.heal.ref == "prev" and bool(self.store.rows("artifacts", self.run_id, kind="adapter"))

    @contextmanager
    def base_reference(self) -> Iterator[tuple[LoadedModel, Callable]]:
        """(base model, context that makes it compute the base) for the drift eval: `lm` with
        its adapters switched off inside the context, or a separate copy of the base."""
        if not self._folded():
            yield self.lm, (lambda: bake.base_view(self.lm))
            return
        with self.base() as base_lm:
            yield base_lm, nullcontext

    @contextmanager
    def base(self) -> Iterator[LoadedModel]:
        """The base model to score against: `lm` with its adapters off, or a separate copy."""
        if not self._folded():
            with bake.base_view(self.lm):
                yield self.lm
            return
        if self._base_copy is None:
            self._base_copy = load_model(ModelSpec(name=self.cfg.model, load_in_4bit=self.cfg.load_in_4bit))
        yield self._base_copy

    # one stage ----------------------------------------------------------------
    def _counted(self, label: str, round_: int, point: str):
        def progress(done: int, total: int) -> None:
            self.store.set_run(self.run_id, stage=f"{'base' if round_ < 0 else f'round {round_}'}: {label} "
                                                    f"{done}/{total}")
            crash_point(point)
            self.say(label, {"round": round_, "step": done, "of": total})
        return progress

    def _base_nll(self) -> list[float] | None:
        rows = self.store.rows("drift_evals", self.run_id, -1, stage="base")
        return json.loads(rows[0]["meta"])["base_nll"] if rows else None

    def measure(self, round_: int, stage: str, vector: SteeringVector | None = None, alpha: float | None = None,
                persona: str | None = None) -> None:
        steer_cfg = SteerConfig(alpha=alpha, layers=self.cfg.layers) if vector is not None else None
        steer_args = dict(vector=vector, steer_cfg=steer_cfg)
        has = lambda table: bool(self.store.rows(table, self.run_id, round_, stage=stage))  # noqa: E731
        if self.tinymfv and not has("evals"):
            self.say(f"eval {stage}", {"round": round_})
            res = evaluate(self.lm, self.data, self.eval_cfg, stage=stage, persona_prompt=persona,
                           progress=self._counted(f"eval {stage}", round_, f"round{round_}:eval-{stage}"),
                           **steer_args)
            self.store.put("evals", [_eval_row(self.run_id, round_, stage, res)])
        if self.items is not None and not has("axis_evals"):
            self.say(f"axis {stage}", {"round": round_})
            res = evaluate_axis(self.lm, self.items, stage=stage, persona_prompt=persona,
                                progress=self._counted(f"axis {stage}", round_, f"round{round_}:axis-{stage}"),
                                **steer_args)
            self.store.put("axis_evals", [dict(run_id=self.run_id, round=round_, stage=stage, **res.summary(),
                                               scores=res.scores, meta=res.meta)])
        if not has("drift_evals"):
            self.say(f"incoherence {stage}", {"round": round_})
            with self.base_reference() as (base_lm, base_view):
                res = evaluate_drift(self.lm, self.drift_cfg, stage=stage, base_lm=base_lm, base_view=base_view,
                                     base_nll=self._base_nll(), persona_prompt=persona, should_stop=self.should_stop,
                                     progress=self._counted(f"incoherence {stage}", round_,
                                                            f"round{round_}:drift-{stage}"), **steer_args)
            self.store.put("drift_evals", [dict(run_id=self.run_id, round=round_, stage=stage,
                                                headline=res.headline, **res.metrics, intervals=res.intervals,
                                                rows=res.rows, meta=res.meta)])

    def absorption(self, round_: int, vector: SteeringVector, alpha: float) -> None:
        """The healed model's mean shift from base at the steered layers, against v."""
        if self.store.rows("absorption", self.run_id, round_):
            return
        self.say("absorption", {"round": round_})
        contexts = default_contexts()[: self.cfg.absorption_contexts]
        healed = mean_last_token_states(self.lm, contexts, DEFAULT_SYSTEM_PROMPT)
        if self._base_states is None:
            with self.base() as base_lm:
                self._base_states = mean_last_token_states(base_lm, contexts, DEFAULT_SYSTEM_PROMPT)
        base = self._base_states
        layers = LayerBand(self.cfg.layers).resolve(self.lm.n_layers)
        out = absorption(healed - base, vector, layers, alpha)
        crash_point(f"round{round_}:absorption")
        self.store.put("absorption", [dict(run_id=self.run_id, round=round_, cos=out["cos"], coef=out["coef"],
                                           share_of_alpha=out["share_of_alpha"], alpha=alpha,
                                           detail=out["per_layer"])])

