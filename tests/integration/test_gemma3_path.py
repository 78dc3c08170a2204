"""The gemma-3-4b-it path without network: a randomly initialised Gemma3ForConditionalGeneration
(the multimodal class the real checkpoint loads as, tiny sizes) saved as a local directory with
a Gemma-style chat template that has no system role. Every stage of a round must work on it,
and LoRA must touch text layers only."""

import json
import math

import pytest
import torch

from steerheal import bake
from steerheal.config import GenerationConfig, SteerConfig
from steerheal.evals.probes import answer_probes
from steerheal.evals.tinymfv import EvalConfig, evaluate
from steerheal.evals.tinymfv_data import load_vignettes
from steerheal.generate import generate
from steerheal.heal import HealConfig, TrainExample, heal
from steerheal.models import bundled_model_dir, load_model
from steerheal.presets import default_contexts, persona_pair
from steerheal.vectors import extract_vector
from tests.conftest import TINYMFV_DATA

pytestmark = pytest.mark.integration
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    tokenizer.chat_template = GEMMA_TEMPLATE
    cfg = Gemma3Config(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=32, vocab_size=len(tokenizer), sliding_window=16,
                         max_position_embeddings=2048),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gemma3") / "tiny-gemma-3"
    Gemma3ForConditionalGeneration(cfg).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def test_a_round_runs_on_the_gemma3_multimodal_class(gemma_dir, tmp_path):
    lm = load_model(str(gemma_dir))
    assert type(lm.model).__name__ == "Gemma3ForConditionalGeneration" and lm.n_layers == 6

    vector = extract_vector(lm, persona_pair(), default_contexts()[:6])
    assert tuple(vector.directions.shape) == (6, 64) and vector.meta["model_type"] == "gemma3"

    gen = GenerationConfig(max_new_tokens=6, min_new_tokens=6)
    comps = generate(lm, ["Should rules be broken?", "Tell me a story.", "What is care?", "Obey?"], gen, vector,
                     SteerConfig(alpha=1.0), alphas=[0.0, 2.0, 4.0, 8.0])
    assert all(c.n_tokens == 6 for c in comps)

    targets = bake.lora_targets(lm, (0.0, 1.0))
    assert targets and all("language_model" in t for t in targets)
    assert not any(word in t for t in targets for word in ("vision", "multi_modal_projector", "lm_head"))

    result = heal(lm, [TrainExample(c.prompt, c.token_ids) for c in comps],
                  HealConfig(rank=4, lora_alpha=8, epochs=1, batch_size=2, val_fraction=0.0, depth=(0.0, 1.0)))
    assert result.steps and all(math.isfinite(s["loss"]) for s in result.steps)
    adapter = bake.save_adapter(lm, 0, tmp_path / "adapter")
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert not any("vision" in t for t in saved["target_modules"])

    data = load_vignettes(data_dir=TINYMFV_DATA)
    res = evaluate(lm, data, EvalConfig(think_tokens=2, limit=7), stage="healed")
    assert res.metrics["n_rows"] == 7 and math.isfinite(res.metrics["auth_nats"])
    assert 0.0 <= res.metrics["coherence"] <= 1.0
    assert len(answer_probes(lm, max_new_tokens=4)) >= 1
