"""The reserved KV cache stores exactly what transformers' growing cache stores."""

import torch
from transformers import LlamaConfig
from transformers.cache_utils import DynamicLayer

from steerheal.kv_cache import _ReservedLayer, reserved_cache


def _feed(layer, steps):
    out = []
    for step in steps:
        if step == "repeat2":
            layer.batch_repeat_interleave(2)
            continue
        keys, values = layer.update(*step)
        out.append((keys.clone(), values.clone()))
    return out


def test_same_keys_and_values_as_dynamic_cache_through_a_batch_relayout():
    g = torch.Generator().manual_seed(0)

    def kv(batch, length):
        return torch.randn(batch, 3, length, 8, generator=g), torch.randn(batch, 3, length, 8, generator=g)

    steps = [kv(1, 5), "repeat2", kv(2, 4), "repeat2", kv(4, 7)] + [kv(4, 1) for _ in range(6)] + [kv(4, 9)]
    grown = _feed(DynamicLayer(), steps)
    reserved_layer = _ReservedLayer(reserve=16)
    reserved = _feed(reserved_layer, steps)
    assert len(grown) == len(reserved)
    for (k1, v1), (k2, v2) in zip(grown, reserved):
        assert k1.shape == k2.shape and torch.equal(k1, k2) and torch.equal(v1, v2)
    assert reserved_layer.get_seq_length() == 5 + 4 + 7 + 6 + 9


def test_decoding_steps_write_into_one_buffer():
    layer = _ReservedLayer(reserve=8)
    layer.update(torch.zeros(2, 1, 4, 8), torch.zeros(2, 1, 4, 8))
    buffer = layer._key_buffer
    for _ in range(8):
        layer.update(torch.ones(2, 1, 1, 8), torch.ones(2, 1, 1, 8))
    assert layer._key_buffer is buffer  # no re-allocation while the reserve lasts
    layer.update(torch.ones(2, 1, 1, 8), torch.ones(2, 1, 1, 8))
    assert layer.get_seq_length() == 13 and layer.keys[:, :, 4:].eq(1).all()


def test_full_attention_layers_reserved_sliding_ones_kept():
    cfg = LlamaConfig(num_hidden_layers=3, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    cache = reserved_cache(cfg, reserve=4)
    assert len(cache.layers) == 3 and all(isinstance(layer, _ReservedLayer) for layer in cache.layers)
