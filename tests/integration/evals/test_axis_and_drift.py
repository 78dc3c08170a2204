"""The instruments on the real bundled model: the axis score and the offline incoherence both
answer the dose (SCIENCE.md 6b), the base scores ~0 incoherence, intervals cover the mean, and
running each prompt once gives the same numbers as scoring every answer on its own."""

import pytest

from steerheal.config import DEFAULT_SYSTEM_PROMPT, SteerConfig
from steerheal.evals.axis import answer_logprobs, bundled_items, evaluate_axis, select
from steerheal.evals.drift import DriftConfig, evaluate_drift
from steerheal.presets import default_contexts, persona_pair
from steerheal.scoring import completion_token_logprobs
from steerheal.stats import paired_difference
from steerheal.vectors import extract_vector

pytestmark = pytest.mark.integration
BAND = "0.45-0.55"


def test_each_prompt_runs_once_and_scores_as_if_alone(lm):
    items = select(bundled_items("care-over-authority"), "dev")[:5]
    shared = answer_logprobs(lm, [i.prompt for i in items], [(i.pos, i.neg) for i in items], batch_size=3)
    for item, (pos, neg) in zip(items, shared):
        ids = [lm.tokenizer(a, add_special_tokens=False).input_ids for a in (item.pos, item.neg)]
        alone = completion_token_logprobs(lm, [item.prompt] * 2, ids, DEFAULT_SYSTEM_PROMPT)
        assert pos == pytest.approx(float(alone[0].mean()), abs=1e-4)
        assert neg == pytest.approx(float(alone[1].mean()), abs=1e-4)


def test_the_axis_score_rises_with_the_dose(lm):
    """love-humanity: its vector pushes its held-out items' warm answers up from alpha 0 to 4
    (paired over items, the interval above 0)."""
    vector = extract_vector(lm, persona_pair("love-humanity"), default_contexts()[:40])
    items = select(bundled_items("love-humanity"), "eval")[:32]
    at = {a: evaluate_axis(lm, items, stage="steered", vector=vector, steer_cfg=SteerConfig(alpha=a, layers=BAND))
          for a in (0.0, 4.0)}
    for res in at.values():
        assert res.ci_low <= res.mean <= res.ci_high and res.n == 32
        assert 0 <= res.share_positive <= 1
    rise = paired_difference(at[4.0].scores, at[0.0].scores)
    assert rise.low > 0, f"axis score did not rise with the dose: {rise}"
    assert at[4.0].share_positive > at[0.0].share_positive


def test_incoherence_is_zero_for_the_base_and_rises_with_the_dose(lm, care_vector):
    cfg = DriftConfig(max_new_tokens=16, n_prompts=6)
    base = evaluate_drift(lm, cfg)
    assert base.headline < 1e-3 and base.metrics["nll_excess"] == pytest.approx(0, abs=1e-4)
    headline = [base.headline]
    for alpha in (4.0, 8.0, 16.0):
        res = evaluate_drift(lm, cfg, stage="steered", base_nll=base.meta["base_nll"], vector=care_vector,
                             steer_cfg=SteerConfig(alpha=alpha, layers=BAND))
        interval = res.intervals["kl_rmse"]
        assert interval["low"] <= res.headline <= interval["high"]
        headline.append(res.headline)
    assert headline == sorted(headline) and headline[1] > 0.3, headline
    assert len(base.rows) == 6 and all(r["n_tokens"] == 16 for r in base.rows)


def test_the_drift_decoder_reads_the_same_text_and_distribution_as_generate_and_scoring(lm):
    """One greedy decode gives both the continuation (as transformers' generate with EOS
    suppressed would) and the model's distribution at each step (as a teacher-forced pass)."""
    from steerheal.config import GenerationConfig
    from steerheal.evals.drift import drift_prompts, greedy_with_logprobs
    from steerheal.generate import generate

    prompts = drift_prompts()[:3]
    ids, logp = greedy_with_logprobs(lm, prompts, DEFAULT_SYSTEM_PROMPT, 12)
    gen = GenerationConfig(max_new_tokens=12, min_new_tokens=12, greedy=True)
    assert ids == [c.token_ids for c in generate(lm, prompts, gen)]
    forced = completion_token_logprobs(lm, prompts, ids, DEFAULT_SYSTEM_PROMPT, full=True)
    for k in range(3):
        assert (logp[k] - forced[k]).abs().max() < 1e-3
