"""Contrastive mean-difference steering vectors (SCIENCE.md section 1).

For each decoder block l and context c, take the block's output at the last prompt
token (right after the assistant tag):  v_l = mean_c h_l(pos, c) - mean_c h_l(neg, c).
Raw, not normalised; the per-layer norms are stored beside it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steerheal import __version__
from steerheal.batching import chunks, encode_left_padded
from steerheal.chat import chat_prompt
from steerheal.config import PersonaPair
from steerheal.errors import SteerhealError
from steerheal.models import LoadedModel

TENSOR_KEY = "directions"
ProgressFn = Callable[[int, int], None]


@dataclass
class SteeringVector:
    """One direction per decoder block, shape (n_layers, hidden). Supports -v and k*v."""

    directions: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.directions.ndim != 2:
            raise SteerhealError(f"A steering vector must be 2-D (layers, hidden), got shape {tuple(self.directions.shape)}.")
        self.directions = self.directions.detach().float().cpu().contiguous()

    @property
    def n_layers(self) -> int:
        return int(self.directions.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.directions.shape[1])

    @property
    def norms(self) -> list[float]:
        return self.directions.norm(dim=-1).tolist()

    def __neg__(self) -> "SteeringVector":
        return self * -1.0

    def __mul__(self, k: float) -> "SteeringVector":
        return SteeringVector(self.directions * float(k), {**self.meta, "scale": self.meta.get("scale", 1.0) * float(k)})

    __rmul__ = __mul__

    def cosine(self, other: "SteeringVector") -> list[float]:
        """Per-layer cosine similarity with another vector of the same shape."""
        return torch.nn.functional.cosine_similarity(self.directions, other.directions, dim=-1).tolist()

    def mean_cosine(self, other: "SteeringVector", layers: Sequence[int] | None = None) -> float:
        cos = self.cosine(other)
        picked = [cos[i] for i in (layers if layers is not None else range(len(cos)))]
        return float(sum(picked) / len(picked))

    def random_like(self, seed: int = 0) -> "SteeringVector":
        """A random direction with the same per-layer norms (the control of SCIENCE.md 1)."""
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.directions.shape, generator=gen)
        noise = noise / noise.norm(dim=-1, keepdim=True) * self.directions.norm(dim=-1, keepdim=True)
        return SteeringVector(noise, {**self.meta, "random_control": True, "random_seed": seed})

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file atomically (temp name, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in {**self.meta, "norms": self.norms}.items()}
        fd, tmp = tempfile.mkstemp(prefix=".vector-", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({TENSOR_KEY: self.directions}, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SteeringVector":
        path = Path(path)
        if not path.is_file():
            raise SteerhealError(f"Vector file {str(path)!r} does not exist.")
        try:
            with safe_open(str(path), framework="pt") as f:
                if TENSOR_KEY not in f.keys():
                    raise SteerhealError(f"{path.name} is not a steerheal vector: it has no '{TENSOR_KEY}' tensor.")
                tensor = f.get_tensor(TENSOR_KEY)
                raw_meta = f.metadata() or {}
        except SteerhealError:
            raise
        except Exception as err:
            raise SteerhealError(f"{path.name} is not a readable safetensors file: {err}") from None
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise SteerhealError(f"{path.name}: the vector must hold finite floating-point numbers.")
        meta = {}
        for key, value in raw_meta.items():
            try:
                meta[key] = json.loads(value)
            except (json.JSONDecodeError, TypeError):
                meta[key] = value
        meta.pop("norms", None)
        return cls(tensor, meta)


def _last_token_states(lm: LoadedModel, prompts: Sequence[str], batch_size: int, progress: ProgressFn | None,
                       done_offset: int, total: int) -> torch.Tensor:
    """Sum over prompts of each block's output at the last prompt token: (layers, hidden)."""
    captured: dict[int, torch.Tensor] = {}

    def capture(idx):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            captured[idx] = hidden[:, -1, :].float()
        return hook

    handles = [layer.register_forward_hook(capture(i)) for i, layer in enumerate(lm.layers)]
    total_sum = torch.zeros(lm.n_layers, lm.hidden_size)
    done = done_offset
    try:
        with torch.inference_mode():
            for batch_prompts in chunks(list(prompts), batch_size):
                batch = encode_left_padded(lm.tokenizer, batch_prompts, lm.device)
                lm.model(**batch, use_cache=False)
                total_sum += torch.stack([captured[i].sum(0).cpu() for i in range(lm.n_layers)])
                done += len(batch_prompts)
                if progress:
                    progress(done, total)
    finally:
        for h in handles:
            h.remove()
    return total_sum


def extract_vector(lm: LoadedModel, pair: PersonaPair, contexts: Sequence[str], batch_size: int = 16,
                   progress: ProgressFn | None = None) -> SteeringVector:
    """Mean-difference vector between the two personas over shared contexts."""
    pair.validate()
    contexts = [c for c in (c.strip() for c in contexts) if c]
    if not contexts:
        raise SteerhealError("The context pool is empty: give at least one user message (the defaults have 80).")
    total = 2 * len(contexts)
    sums = {}
    for offset, side in enumerate(("pos", "neg")):
        system = pair.system_prompt(side)
        prompts = [chat_prompt(lm.tokenizer, c, system) for c in contexts]
        sums[side] = _last_token_states(lm, prompts, batch_size, progress, offset * len(contexts), total)
    directions = (sums["pos"] - sums["neg"]) / len(contexts)
    mean_norm_pos = (sums["pos"] / len(contexts)).norm(dim=-1)
    meta = {
        "model_id": lm.model_id,
        "model_type": getattr(lm.model.config, "model_type", ""),
        "pos": pair.pos,
        "neg": pair.neg,
        "pair_name": pair.name,
        "n_contexts": len(contexts),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "steerheal_version": __version__,
        "residual_norms": [round(x, 4) for x in mean_norm_pos.tolist()],
    }
    return SteeringVector(directions, meta)


def mean_last_token_states(lm: LoadedModel, contexts: Sequence[str], system: str, batch_size: int = 16
                           ) -> torch.Tensor:
    """Each block's mean output at the last prompt token over the contexts: (layers, hidden)."""
    prompts = [chat_prompt(lm.tokenizer, c, system) for c in contexts]
    return _last_token_states(lm, prompts, batch_size, None, 0, len(prompts)) / len(prompts)


def absorption(shift: torch.Tensor, vector: SteeringVector, layers: Sequence[int], alpha: float) -> dict:
    """How much of the steering a healed model carries without hooks (SCIENCE.md 6b): its mean
    hidden-state shift from base (`shift`, (layers, hidden)) at the steered layers, as cosine
    with v and as the projection on v in units of v (`coef`, comparable to alpha), and that
    projection over this round's alpha (`share_of_alpha`: 1.0 = the whole per-layer push)."""
    cos, coef = [], []
    for i in layers:
        d, v = shift[i].float(), vector.directions[i].float()
        cos.append(float(torch.nn.functional.cosine_similarity(d, v, dim=0)))
        coef.append(float(d @ v / (v @ v).clamp_min(1e-12)))
    mean_cos, mean_coef = sum(cos) / len(cos), sum(coef) / len(coef)
    return {"cos": mean_cos, "coef": mean_coef, "share_of_alpha": mean_coef / alpha if alpha else float("nan"),
            "per_layer": {"layers": list(layers), "cos": cos, "coef": coef}, "alpha": alpha}
