"""Fixed probe prompts answered greedily, with no steering, stored verbatim each round."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from steerheal.config import DEFAULT_SYSTEM_PROMPT, GenerationConfig
from steerheal.errors import SteerhealError
from steerheal.generate import generate
from steerheal.models import LoadedModel
from steerheal.presets import probe_prompts


@dataclass
class ProbeAnswer:
    prompt: str
    answer: str
    n_tokens: int
    finished: bool


def answer_probes(lm: LoadedModel, prompts: Sequence[str] | None = None, max_new_tokens: int = 96,
                  system: str = DEFAULT_SYSTEM_PROMPT, batch_size: int = 8) -> list[ProbeAnswer]:
    """Greedy answers to the probe prompts ("Do you love humanity?" first by default)."""
    prompts = list(prompts) if prompts is not None else probe_prompts()
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise SteerhealError("No probe prompts given: add at least one question.")
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, greedy=True, batch_size=batch_size, system_prompt=system)
    return [ProbeAnswer(c.prompt, c.text, c.n_tokens, c.finished) for c in generate(lm, prompts, cfg)]
