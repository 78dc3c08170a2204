"""Add alpha * v_l to the output of each block in a layer band, as a context manager.

    with steer(lm, vector, SteerConfig(alpha=2.0)):
        model.generate(...)

Hooks always come off, even when the body raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch

from steerheal.config import LayerBand, SteerConfig
from steerheal.errors import SteerhealError

if TYPE_CHECKING:
    from steerheal.models import LoadedModel
    from steerheal.vectors import SteeringVector


class _StepCounter:
    """Counts decoding steps: a forward over more than one new position is the prompt
    (step 0); each single-position forward after it is one generated step."""

    def __init__(self) -> None:
        self.step = 0

    def pre_hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is not None and hidden.shape[1] > 1:
            self.step = 0
        else:
            self.step += 1


class RowAlphas:
    """Per-row strengths for the batch now running, replacing cfg.alpha while set, so one
    batch can mix several alphas (set `.values` before each forward of a new batch)."""

    def __init__(self) -> None:
        self.values: torch.Tensor | None = None

    def set(self, alphas) -> None:
        self.values = torch.as_tensor(list(alphas), dtype=torch.float32)


def _make_hook(direction: torch.Tensor, cfg: SteerConfig, counter: _StepCounter, rows: RowAlphas | None):
    alpha = float(cfg.alpha)
    unit = direction / direction.norm().clamp_min(1e-12)

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        vec = direction.to(dtype=hidden.dtype, device=hidden.device)
        decay = cfg.decay ** counter.step if cfg.decay != 1.0 else 1.0
        if rows is not None and rows.values is not None:
            scale = (rows.values.to(device=hidden.device, dtype=hidden.dtype) * decay)[:, None, None]
        else:
            scale = alpha * decay
        add = scale * vec.expand_as(hidden)
        if cfg.positions == "generated" and hidden.shape[1] > 1:
            # In the prompt pass only the last position (which emits the first token) is steered.
            mask = torch.zeros(hidden.shape[:2] + (1,), dtype=hidden.dtype, device=hidden.device)
            mask[:, -1] = 1
            add = add * mask
        if cfg.cos_gate is not None:
            cos = torch.nn.functional.cosine_similarity(
                hidden.float(), unit.to(hidden.device).float().expand_as(hidden), dim=-1
            )
            add = add * (cos < cfg.cos_gate).unsqueeze(-1).to(hidden.dtype)
        steered = hidden + add
        if isinstance(output, tuple):
            return (steered, *output[1:])
        return steered

    return hook


@contextmanager
def steer(lm: "LoadedModel", vector: "SteeringVector", cfg: SteerConfig | None = None,
          row_alphas: RowAlphas | None = None, **overrides) -> Iterator[list[int]]:
    """Steer `lm` with `vector` inside the block. Yields the steered layer indices.
    With `row_alphas`, each batch row gets its own strength (see RowAlphas).

    alpha = 0 adds nothing (token-for-token identical output); negative alpha steers
    towards the negative persona.
    """
    cfg = cfg or SteerConfig()
    if overrides:
        cfg = SteerConfig(**{**cfg.__dict__, **overrides})
    cfg.validate()
    if vector.n_layers != lm.n_layers or vector.hidden_size != lm.hidden_size:
        raise SteerhealError(
            f"The steering vector has shape ({vector.n_layers}, {vector.hidden_size}) but the model has "
            f"{lm.n_layers} layers of width {lm.hidden_size}: extract a vector from this model."
        )
    layers = LayerBand(cfg.layers).resolve(lm.n_layers)
    counter = _StepCounter()
    handles = [lm.layers[layers[0]].register_forward_pre_hook(counter.pre_hook, with_kwargs=True)]
    try:
        for i in layers:
            handles.append(lm.layers[i].register_forward_hook(_make_hook(vector.directions[i], cfg, counter, row_alphas)))
        yield layers
    finally:
        for handle in handles:
            handle.remove()


def active_hook_count(lm: "LoadedModel") -> int:
    """How many forward hooks sit on the decoder blocks (0 when nothing is steering)."""
    return sum(len(layer._forward_hooks) + len(layer._forward_pre_hooks) for layer in lm.layers)
