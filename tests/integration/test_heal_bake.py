"""Heal (LoRA + KL barrier) and bake on the real bundled model. Each test heals its own
fresh copy of the model: healing turns the model into a PEFT model."""

import pytest
import torch
from peft import PeftModel

from steerheal import bake
from steerheal.config import GenerationConfig, SteerConfig
from steerheal.errors import SteerhealError
from steerheal.generate import generate
from steerheal.heal import HealConfig, TrainExample, batch_loss, heal, _encode
from steerheal.models import load_model
from steerheal.presets import axis_prompts

pytestmark = pytest.mark.integration
PROBE = "Hello, how are you today?"


@pytest.fixture(scope="module")
def examples(lm, care_vector):
    comps = generate(lm, axis_prompts()[:12], GenerationConfig(max_new_tokens=32, seed=3), care_vector,
                     SteerConfig(alpha=4.0))
    return [TrainExample(c.prompt, c.token_ids) for c in comps]


@pytest.fixture()
def fresh():
    return load_model("bundled")


def logits(lm, text=PROBE):
    ids = torch.tensor([lm.tokenizer(text).input_ids])
    with torch.no_grad():
        return lm.model(ids).logits


def mean_kl_to_base(lm, examples):
    enc = _encode(lm, examples, "You are a helpful assistant.")
    cfg = HealConfig(reg="kl_rev", agg="mean", tau=0.0, lam=1.0)
    bake.unmerge(lm)
    with torch.no_grad():
        out = batch_loss(lm, enc, cfg, 1.0, bake.adapter_names(lm)[-1])
    bake.merge(lm)
    return out["divergence"]


def test_fresh_adapter_is_a_no_op(fresh):
    before = logits(fresh)
    bake.add_adapter(fresh, 0, rank=8, alpha=16, depth=(0.2, 0.8))
    assert torch.equal(before, logits(fresh))
    targets = bake.lora_targets(fresh, (0.2, 0.8))
    assert targets and not any("lm_head" in t or "embed" in t for t in targets)
    assert all(6 <= int(t.split(".")[2]) < 24 for t in targets)


def test_heal_learns_the_completions_and_logs_each_step(fresh, examples):
    cfg = HealConfig(epochs=2, rank=8, lora_alpha=16, lr=1e-3, reg="none", val_fraction=0.0)
    enc = _encode(fresh, examples, "You are a helpful assistant.")
    with torch.no_grad():
        nll_before = float(batch_loss(fresh, enc, cfg, 0.0, "x")["nll"])
    res = heal(fresh, examples, cfg)
    bake.unmerge(fresh)
    with torch.no_grad():
        nll_after = float(batch_loss(fresh, enc, cfg, 0.0, res.adapter)["nll"])
    assert nll_after < nll_before - 0.1
    assert len(res.steps) == 6 and all(s["divergence"] == 0.0 and not s["fired"] for s in res.steps)


def test_tight_barrier_stays_closer_to_base_than_plain_nll(examples):
    # 8 completions, one epoch (two steps) at a high learning rate: plain NLL moves the model
    # several times further from base than the barrier lets it (measured 0.19 vs 0.05 nats).
    few = examples[:8]
    free = load_model("bundled")
    heal(free, few, HealConfig(epochs=1, rank=8, lora_alpha=16, lr=2e-3, reg="none"))
    tight = load_model("bundled")
    res = heal(tight, few, HealConfig(epochs=1, rank=8, lora_alpha=16, lr=2e-3, reg="kl_rev", agg="rmse",
                                      tau=0.0, lam=20.0))
    assert any(s["fired"] for s in res.steps)
    assert mean_kl_to_base(tight, few) < mean_kl_to_base(free, few)


def test_adapters_save_as_peft_and_rebuild_the_round_k_model(fresh, examples, tmp_path):
    cfg = HealConfig(epochs=1, rank=8, lora_alpha=16, lr=1e-3)
    heal(fresh, examples, cfg, round_=0)
    heal(fresh, examples, cfg, round_=1)
    healed = logits(fresh)
    dirs = [bake.save_adapter(fresh, r, tmp_path / f"round-{r}") for r in (0, 1)]
    # Standard tools load each adapter.
    PeftModel.from_pretrained(load_model("bundled").model, str(dirs[0]))
    rebuilt = load_model("bundled")
    bake.load_adapters(rebuilt, dirs)
    assert torch.allclose(logits(rebuilt), healed, atol=1e-4)
    bake.unmerge(rebuilt)  # folded == unfolded adapters
    assert torch.allclose(logits(rebuilt), healed, atol=1e-4)


def test_prev_reference_folds_earlier_rounds_so_memory_stays_flat(fresh, examples, tmp_path):
    cfg = HealConfig(epochs=1, rank=8, lora_alpha=16, lr=1e-3, ref="prev")
    dirs = []
    for r in (0, 1):
        heal(fresh, examples, cfg, round_=r)
        dirs.append(bake.save_adapter(fresh, r, tmp_path / f"round-{r}"))
        assert bake.adapter_names(fresh) == [f"round{r}"]  # earlier rounds are in the weights now
    lora_params = sum(p.numel() for n, p in fresh.model.named_parameters() if "lora_" in n)
    assert lora_params == sum(p.numel() for n, p in fresh.model.named_parameters() if ".round1." in n)
    rebuilt = load_model("bundled")
    bake.load_adapters(rebuilt, dirs)  # the stacked rebuild (export, resume) is the same model
    assert torch.allclose(logits(rebuilt), logits(fresh), atol=1e-4)


def test_bad_heal_config_and_too_few_examples(fresh, examples):
    with pytest.raises(SteerhealError, match="Unknown KL aggregate"):
        HealConfig(agg="median").validate()
    with pytest.raises(SteerhealError, match="tau"):
        HealConfig(tau=-1).validate()
    with pytest.raises(SteerhealError, match="at least 4"):
        heal(fresh, examples[:2], HealConfig())
    assert not bake.is_peft(fresh)  # nothing was added
