"""The folded grouped-query attention equals transformers' SDPA attention."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from steerheal.attention import NAME, folded_gqa, folded_gqa_attention


class _Module:
    num_key_value_groups = 3
    is_causal = True


def _mask(batch: int, q_len: int, kv_len: int, pad: list[int]) -> torch.Tensor:
    """Causal mask with `pad[b]` masked key positions in the middle of row b."""
    mask = torch.ones(batch, 1, q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
    for b, n in enumerate(pad):
        mask[b, :, :, 2:2 + n] = False
    return mask


@pytest.mark.parametrize("q_len", [1, 7])
def test_folded_equals_transformers_sdpa(q_len):
    g = torch.Generator().manual_seed(1)
    batch, kv_len = 3, 12
    query = torch.randn(batch, 9, q_len, 16, generator=g)
    key, value = torch.randn(batch, 3, kv_len, 16, generator=g), torch.randn(batch, 3, kv_len, 16, generator=g)
    mask = _mask(batch, q_len, kv_len, pad=[0, 3, 1])
    expected, _ = sdpa_attention_forward(_Module(), query, key, value, mask, scaling=0.25)
    got, _ = folded_gqa_attention(_Module(), query, key, value, mask, scaling=0.25)
    assert got.shape == expected.shape == (batch, q_len, 9, 16)
    assert torch.allclose(got, expected, atol=1e-6)


def test_model_logits_unchanged_and_setting_restored():
    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=50, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 50, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.inference_mode():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with folded_gqa(model):
            assert model.config._attn_implementation == NAME
            folded = model(input_ids=ids, attention_mask=mask).logits
    assert model.config._attn_implementation == "sdpa"
    assert torch.allclose(plain[0], folded[0], atol=1e-5) and torch.allclose(plain[1, 3:], folded[1, 3:], atol=1e-5)
