"""The forced-choice eval on the real bundled model and the real tinymfv data."""


import pytest
import torch

from steerheal.config import SteerConfig, persona_system_prompt
from steerheal.evals.tinymfv import (PREFILL, THINK_CLOSE, THINK_OPEN, EvalConfig, evaluate, option_token_ids,
                                     turn_markers, user_message)
from steerheal.evals.tinymfv_data import load_vignettes
from steerheal.chat import chat_prompt
from steerheal.presets import persona_pair
from tests.conftest import TINYMFV_DATA

pytestmark = pytest.mark.integration
DATA_DIR = TINYMFV_DATA
needs_data = pytest.mark.skipif(DATA_DIR is None, reason="tinymfv data not present")

# Reference implementation (tinymfv b726db9), bundled SmolLM2-135M float32, 132 classic
# other_violate rows, T = 16, batch 8 (issue 3).
REFERENCE = dict(auth_nats=-4.5957, care_nats=-4.3409, coherence=0.13174, top1_acc=0.1212)
REFERENCE_PROFILE = dict(Care=0.01303, Fairness=0.15532, Loyalty=0.54347, Authority=0.01009, Sanctity=0.20364,
                         Liberty=0.01232, SocialNorms=0.06213)


@pytest.fixture(scope="module")
def data():
    return load_vignettes("classic", "other_violate", data_dir=DATA_DIR)


@pytest.fixture(scope="module")
def full_run(lm, data):
    # Two batches in flight on two threads, whatever torch's thread count (one under make test's
    # two pytest workers): the longest test of the suite then uses what the other worker leaves idle.
    return evaluate(lm, data, EvalConfig(think_tokens=16, batch_size=32, workers=2))


@needs_data
def test_reference_care_and_coherence(full_run):
    m = full_run.metrics
    assert m["n_rows"] == 132
    assert abs(m["coherence"] - REFERENCE["coherence"]) <= 0.005, m["coherence"]
    assert m["top1_acc"] == pytest.approx(REFERENCE["top1_acc"], abs=0.008)
    assert m["profile"]["Loyalty"] == pytest.approx(0.54347, abs=0.01)


@needs_data
def test_reference_auth_nats(full_run):
    assert abs(full_run.metrics["auth_nats"] - REFERENCE["auth_nats"]) <= 0.02, full_run.metrics["auth_nats"]


@needs_data
def test_reference_care_nats(full_run):
    assert abs(full_run.metrics["care_nats"] - REFERENCE["care_nats"]) <= 0.02, full_run.metrics["care_nats"]


@needs_data
def test_reference_profile_reproduced_to_the_reported_digits(full_run):
    """The default protocol reads the answer as the reference code does, so its numbers are
    the reference's, not merely within tolerance."""
    m = full_run.metrics
    assert full_run.meta["protocol"] == "tinymfv"
    for key in ("auth_nats", "care_nats"):
        assert m[key] == pytest.approx(REFERENCE[key], abs=1e-3), key
    assert m["coherence"] == pytest.approx(REFERENCE["coherence"], abs=1e-4)
    for name, value in REFERENCE_PROFILE.items():
        assert m["profile"][name] == pytest.approx(value, abs=1e-4), name


@needs_data
def test_low_coherence_is_flagged_not_hidden(full_run):
    assert full_run.meta["coherence_band"] == "broken"
    assert "not meaningful" in full_run.warning
    assert full_run.meta["comparable"] and "tinymfv files" in full_run.meta["data_source"]


def test_batched_cached_frames_match_flat_forwards(lm):
    """Three vignettes of different lengths in one batch: the batch-wide prefix, the
    frame-shared parts and the frames' rests run separately (padding between them), the think
    and suffix reuse the KV cache. Read by the clean protocol, every frame must equal one
    plain unpadded forward over prompt + think + suffix."""
    from steerheal.evals.tinymfv_data import demo_set

    data = load_vignettes(data_dir=DATA_DIR) if DATA_DIR else demo_set()
    by_length = sorted(data.rows, key=lambda r: len(r.text))
    rows = [by_length[0], by_length[len(by_length) // 2], by_length[-1]]
    res = evaluate(lm, type("D", (), {"rows": rows, "source": "t", "comparable": True, "config": "classic",
                                      "condition": "other_violate"})(), EvalConfig(think_tokens=6, batch_size=6,
                                                                               protocol="clean"))
    tok = lm.tokenizer
    end_of_turn, opened = turn_markers(tok)
    suffix = tok(THINK_CLOSE + end_of_turn + opened + PREFILL, add_special_tokens=False).input_ids
    options = torch.tensor(option_token_ids(tok))
    for row, result in zip(rows, res.rows):
        for frame, reverse in (("fwd", False), ("rev", True)):
            got = result.frames[frame]
            prompt = tok(chat_prompt(tok, user_message(row.text, reverse), None) + THINK_OPEN,
                         add_special_tokens=False).input_ids
            think = tok(got["think"], add_special_tokens=False).input_ids
            with torch.inference_mode():
                logits = lm.model(torch.tensor([prompt + think + suffix])).logits[0, -1].float()
            flat = torch.log_softmax(logits, -1)[options]
            assert torch.allclose(flat, torch.tensor(got["logprobs"]), atol=1e-3), (row.id, frame)


def test_three_stages_on_a_stratified_subset(lm, care_vector):
    data = load_vignettes(data_dir=DATA_DIR) if DATA_DIR else None
    from steerheal.evals.tinymfv_data import demo_set

    data = data or demo_set()
    cfg = EvalConfig(think_tokens=2, limit=7)
    base = evaluate(lm, data, cfg)
    zero = evaluate(lm, data, cfg, stage="steered", vector=care_vector, steer_cfg=SteerConfig(alpha=0.0))
    steered = evaluate(lm, data, cfg, stage="steered", vector=care_vector, steer_cfg=SteerConfig(alpha=4.0))
    prompted = evaluate(lm, data, cfg, stage="prompted",
                        persona_prompt=persona_system_prompt(persona_pair().pos))
    # Steering that treats the prompt pass specially runs one batch at a time, one prompt pass each.
    generated = evaluate(lm, data, cfg, stage="steered", vector=care_vector,
                         steer_cfg=SteerConfig(alpha=4.0, positions="generated"))
    from steerheal.parallel import auto_workers

    assert steered.meta["workers"] == auto_workers(lm.device) and generated.meta["workers"] == 1
    assert generated.metrics["auth_nats"] != pytest.approx(steered.metrics["auth_nats"], abs=1e-3)
    assert base.metrics["n_rows"] == 7 and len({r.foundation for r in base.rows}) == 7
    assert zero.metrics["auth_nats"] == pytest.approx(base.metrics["auth_nats"], abs=1e-6)
    assert steered.metrics["auth_nats"] != pytest.approx(base.metrics["auth_nats"], abs=1e-3)
    assert prompted.metrics["auth_nats"] != pytest.approx(base.metrics["auth_nats"], abs=1e-3)
    assert steered.meta["steer"]["alpha"] == 4.0 and prompted.meta["persona_prompt"].startswith("You are someone")


def test_threaded_chunked_eval_equals_one_pass_per_batch(lm, monkeypatch):
    """Two batches in flight on threads, prefixes shared and the prefill cut into short chunks
    give the same think and the same answer log-probs as one plain prompt pass per batch, one
    batch at a time."""
    import steerheal.evals.tinymfv as tinymfv
    from steerheal.evals.tinymfv_data import demo_set

    data = load_vignettes(data_dir=DATA_DIR) if DATA_DIR else demo_set()
    rows = data.rows[:4]
    plain = tinymfv.forced_choice(lm, rows, 3, batch_size=4, workers=1, share_prefixes=False)
    monkeypatch.setattr(tinymfv, "PREFILL_ROWS", 16)  # chunks of 4 tokens at 4 frames per batch
    fast = tinymfv.forced_choice(lm, rows, 3, batch_size=4, workers=2)
    for a, b in zip(plain, fast):
        for frame in ("fwd", "rev"):
            assert a.frames[frame]["think"] == b.frames[frame]["think"], (a.id, frame)
            assert a.frames[frame]["logprobs"] == pytest.approx(b.frames[frame]["logprobs"], abs=1e-4), (a.id, frame)
