"""Filters on real steered completions of the bundled model."""

import pytest

from steerheal.config import GenerationConfig, SteerConfig
from steerheal.filters import FilterConfig, evaluate_completions
from steerheal.generate import generate
from steerheal.presets import axis_prompts

pytestmark = pytest.mark.integration


def test_strong_steering_shows_up_in_kl_and_the_filters(lm, care_vector):
    prompts = axis_prompts()[:3]
    gen = GenerationConfig(max_new_tokens=40, greedy=True)
    mild_cfg, wild_cfg = SteerConfig(alpha=1.0), SteerConfig(alpha=40.0, layers="0.3-0.7")
    mild = generate(lm, prompts, gen, care_vector, mild_cfg)
    wild = generate(lm, prompts, gen, care_vector, wild_cfg)
    comps = mild + wild
    verdicts = evaluate_completions(
        lm, [c.prompt for c in comps], [c.token_ids for c in comps], [c.text for c in comps], gen.system_prompt,
        FilterConfig(max_kl_rmse=5.0), care_vector, [mild_cfg] * 3 + [wild_cfg] * 3)
    mild_v, wild_v = verdicts[:3], verdicts[3:]
    assert all(set(v.kl) == {"mean", "rmse", "p95", "max"} for v in verdicts)
    assert max(v.kl["rmse"] for v in mild_v) < min(v.kl["rmse"] for v in wild_v)
    assert sum(v.auto for v in mild_v) > sum(v.auto for v in wild_v)
    for v in wild_v:
        if not v.auto:
            assert v.reasons and all(r for r in v.reasons)
    assert {c.name for c in verdicts[0].checks} >= {"tail_perplexity", "repetition", "narration", "refusal"}
