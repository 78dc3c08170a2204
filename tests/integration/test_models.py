import pytest

from steerheal.config import ModelSpec
from steerheal.errors import SteerhealError
from steerheal.models import find_layers, load_model

pytestmark = pytest.mark.integration


def test_bundled_model_is_ready_for_chat(lm):
    assert lm.n_layers == 30 and lm.hidden_size == 576
    assert lm.tokenizer.padding_side == "left"
    assert lm.tokenizer.pad_token is not None
    assert not any(p.requires_grad for p in lm.model.parameters())


def test_unknown_model_id_is_a_clear_error():
    with pytest.raises(SteerhealError, match="Cannot load model 'no-such-org/no-such-model'"):
        load_model(ModelSpec(name="no-such-org/no-such-model"))


def test_missing_local_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SteerhealError, match="does not exist"):
        load_model(ModelSpec(name=str(tmp_path / "nope")))


def test_layers_found_for_gemma3_multimodal():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    cfg = Gemma3Config(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=32, vocab_size=512, sliding_window=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4,
    )
    layers = find_layers(Gemma3ForConditionalGeneration(cfg))
    assert len(layers) == 4 and "Gemma3DecoderLayer" in type(layers[0]).__name__


def test_unknown_architecture_names_the_class():
    import torch

    with pytest.raises(SteerhealError, match="Linear"):
        find_layers(torch.nn.Linear(2, 2))
