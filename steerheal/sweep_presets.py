"""Named sweeps. `seed-table`: the seed's headline comparison (SCIENCE.md section 8), the KL
barrier aggregated by mean vs by rmse at the same tau, lambda and reference, over 3 seeds, with
settings small enough for the bundled model on a 2-core CPU (6 runs in under an hour).

tau is scaled to this model's measured KL, as SCIENCE.md's CPU column says: at the seed's tau 1.0
the barrier never fired here (heal's divergence to base peaked at 0.20 nats), so both aggregates
trained on plain NLL; at 0.05 it fires on 40-50% of the steps, more under rmse (README, Sweeps).
`--set tau=1.0` runs the seed's tau."""

from __future__ import annotations

from steerheal.errors import SteerhealError
from steerheal.sweep_spec import SweepSpec

SEED_TABLE_CPU_BASE = dict(
    model="bundled", pair="care-over-authority", rounds=4, alphas=[2.0, 3.0, 4.0], n_completions=16,
    max_new_tokens=32, n_contexts=40, axis_limit=40, drift_prompts=16, drift_tokens=24, absorption_contexts=8,
    probe_tokens=48, tinymfv="off",
    heal=dict(rank=16, lora_alpha=32, epochs=2, reg="kl_rev", tau=0.05, lam=0.3, ref="base"))

PRESETS = {
    "seed-table": SweepSpec(name="seed table: KL barrier by mean vs rmse (same tau, lambda, reference)",
                            base=SEED_TABLE_CPU_BASE, axes={"agg": ["mean", "rmse"], "seed": [1, 2, 3]}),
}


def preset(name: str) -> SweepSpec:
    if name not in PRESETS:
        raise SteerhealError(f"Unknown sweep preset {name!r}: use one of {', '.join(PRESETS)}.")
    return PRESETS[name]
