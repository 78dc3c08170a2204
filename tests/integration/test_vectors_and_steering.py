"""Steering vectors and hooks on the real bundled model."""

import pytest
import torch

from steerheal.config import GenerationConfig, PersonaPair, SteerConfig
from steerheal.errors import SteerhealError
from steerheal.generate import generate, stream
from steerheal.presets import axis_prompts
from steerheal.scoring import completion_token_logprobs, perplexity
from steerheal.steering import active_hook_count, steer
from steerheal.vectors import SteeringVector, extract_vector

pytestmark = pytest.mark.integration

GREEDY = GenerationConfig(max_new_tokens=32, greedy=True, batch_size=8)


def test_vector_shape_norms_and_metadata(lm, care_vector):
    v = care_vector
    assert (v.n_layers, v.hidden_size) == (30, 576)
    norms = v.norms
    assert all(n > 0 for n in norms)
    # Raw (not normalised): small in early layers, larger in late layers, as measured in NOTES.md.
    assert sum(norms[20:]) / 10 > 5 * sum(norms[:5]) / 5
    ratio = [n / r for n, r in zip(norms, v.meta["residual_norms"])]
    assert 0.01 < ratio[5] < 0.04 and 0.03 < ratio[16] < 0.12
    assert v.meta["n_contexts"] == 80 and v.meta["pos"].startswith("someone who looks after")


def test_vector_round_trip_on_disk(care_vector, tmp_path):
    loaded = SteeringVector.load(care_vector.save(tmp_path / "care.safetensors"))
    assert torch.equal(loaded.directions, care_vector.directions)
    assert loaded.meta["pos"] == care_vector.meta["pos"]


def test_extraction_rejects_bad_input(lm):
    with pytest.raises(SteerhealError, match="context pool is empty"):
        extract_vector(lm, PersonaPair("someone kind", "someone cruel"), ["  ", ""])
    with pytest.raises(SteerhealError, match="identical"):
        extract_vector(lm, PersonaPair("someone kind", "someone kind"), ["hi"])


def test_alpha_zero_is_token_for_token_identical(lm, care_vector):
    prompts = axis_prompts()[:3]
    base = generate(lm, prompts, GREEDY)
    zero = generate(lm, prompts, GREEDY, care_vector, SteerConfig(alpha=0.0))
    assert [c.token_ids for c in base] == [c.token_ids for c in zero]


def test_batched_and_single_greedy_generation_agree(lm):
    prompts = axis_prompts()[:4]
    batched = generate(lm, prompts, GREEDY)
    single = [generate(lm, [p], GREEDY)[0] for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]


def test_hooks_come_off_even_after_an_exception(lm, care_vector):
    assert active_hook_count(lm) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with steer(lm, care_vector, SteerConfig(alpha=4.0)):
            assert active_hook_count(lm) > 0
            raise RuntimeError("boom")
    assert active_hook_count(lm) == 0


def test_mismatched_vector_is_refused(lm):
    bad = SteeringVector(torch.ones(4, 8))
    with pytest.raises(SteerhealError, match="extract a vector from this model"):
        with steer(lm, bad, SteerConfig(alpha=1.0)):
            pass


def _base_perplexity(lm, completions):
    logps = completion_token_logprobs(lm, [c.prompt for c in completions], [c.token_ids for c in completions],
                                      GREEDY.system_prompt)
    return sum(perplexity(lp) for lp in logps) / len(logps)


def test_moderate_alpha_changes_answers_and_huge_alpha_degrades_them(lm, care_vector):
    prompts = axis_prompts()[:4]
    base = generate(lm, prompts, GREEDY)
    moderate = generate(lm, prompts, GREEDY, care_vector, SteerConfig(alpha=3.0))
    huge = generate(lm, prompts, GREEDY, care_vector, SteerConfig(alpha=40.0, layers="0.3-0.7"))
    assert sum(b.text != m.text for b, m in zip(base, moderate)) >= 3
    ppl = {name: _base_perplexity(lm, c) for name, c in [("base", base), ("moderate", moderate), ("huge", huge)]}
    # Perplexity under the unsteered model: its own greedy text is easy, huge steering is word salad.
    assert ppl["base"] < ppl["moderate"] < ppl["huge"]
    assert ppl["huge"] > 10 * ppl["base"], ppl


def test_negative_alpha_moves_the_other_way(lm, care_vector):
    prompt = ["A rule says I must not help a sick stranger. Should I follow it?"]
    pos = generate(lm, prompt, GREEDY, care_vector, SteerConfig(alpha=3.0))[0].text
    neg = generate(lm, prompt, GREEDY, -care_vector, SteerConfig(alpha=3.0))[0].text
    neg2 = generate(lm, prompt, GREEDY, care_vector, SteerConfig(alpha=-3.0))[0].text
    assert neg == neg2 and pos != neg


def test_cos_gate_and_generated_only_positions(lm, care_vector):
    prompts = axis_prompts()[:2]
    base = generate(lm, prompts, GREEDY)
    # A gate of -1 never opens: nothing is steered.
    gated = generate(lm, prompts, GREEDY, care_vector, SteerConfig(alpha=6.0, cos_gate=-1.0))
    assert [c.token_ids for c in gated] == [c.token_ids for c in base]
    every = generate(lm, prompts, GREEDY, care_vector, SteerConfig(alpha=6.0))
    generated_only = generate(lm, prompts, GREEDY, care_vector, SteerConfig(alpha=6.0, positions="generated"))
    assert [c.text for c in generated_only] != [c.text for c in base]
    assert [c.text for c in generated_only] != [c.text for c in every]


def test_decay_weakens_steering_over_the_generation(lm, care_vector):
    prompts = axis_prompts()[:3]
    strong = generate(lm, prompts, GREEDY, care_vector, SteerConfig(alpha=40.0, layers="0.3-0.7"))
    decayed = generate(lm, prompts, GREEDY, care_vector, SteerConfig(alpha=40.0, layers="0.3-0.7", decay=0.5))

    def tail_variety(completions):  # distinct tokens in the second half: a token loop has few
        tails = [c.token_ids[len(c.token_ids) // 2:] for c in completions]
        return sum(len(set(t)) / max(len(t), 1) for t in tails) / len(tails)

    assert tail_variety(decayed) > tail_variety(strong) + 0.2


def test_stream_yields_growing_text_matching_generate(lm, care_vector):
    prompt = axis_prompts()[0]
    cfg = SteerConfig(alpha=2.0)
    chunks = list(stream(lm, prompt, GREEDY, care_vector, cfg))
    assert len(chunks) > 5
    assert all(b.startswith(a) for a, b in zip(chunks, chunks[1:]))
    assert chunks[-1] == generate(lm, [prompt], GREEDY, care_vector, cfg)[0].text
    assert active_hook_count(lm) == 0


def test_closing_a_stream_early_stops_and_unhooks(lm, care_vector):
    it = stream(lm, axis_prompts()[0], GenerationConfig(max_new_tokens=64, greedy=True), care_vector,
                SteerConfig(alpha=2.0))
    next(it)
    it.close()
    assert active_hook_count(lm) == 0


def test_sampling_is_seeded(lm):
    cfg = GenerationConfig(max_new_tokens=16, seed=7)
    a = generate(lm, axis_prompts()[:2], cfg)
    b = generate(lm, axis_prompts()[:2], cfg)
    c = generate(lm, axis_prompts()[:2], GenerationConfig(max_new_tokens=16, seed=8))
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]


def test_one_batch_with_a_different_alpha_per_row_matches_one_alpha_at_a_time(lm, care_vector):
    prompts = ["Should rules ever be broken?", "Tell me about your day.", "Is obedience a virtue?",
               "What do you owe a stranger?"]
    gen = GenerationConfig(max_new_tokens=16, greedy=True)
    mixed = generate(lm, prompts, gen, care_vector, SteerConfig(alpha=1.0), alphas=[0.0, 6.0, 0.0, 6.0])
    plain = generate(lm, prompts[0::2], gen, care_vector, SteerConfig(alpha=0.0))
    strong = generate(lm, prompts[1::2], gen, care_vector, SteerConfig(alpha=6.0))
    assert [c.text for c in mixed] == [plain[0].text, strong[0].text, plain[1].text, strong[1].text]
    assert mixed[1].text != generate(lm, prompts[1:2], gen)[0].text


def test_generation_stops_at_the_next_step_when_asked(lm):
    asked = []

    def stop_after_three_steps() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(InterruptedError):
        generate(lm, axis_prompts()[:2], GenerationConfig(max_new_tokens=64, greedy=True),
                 should_stop=stop_after_three_steps)
    assert len(asked) <= 6, "generation went on after the stop request"
