"""The persona pairs, context pool and prompt pools shipped in steerheal/assets."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from steerheal.config import PersonaPair
from steerheal.errors import SteerhealError

DEFAULT_PAIR = "care-over-authority"


def _asset_text(name: str) -> str:
    return resources.files("steerheal").joinpath("assets", name).read_text(encoding="utf-8")


def read_lines(text: str) -> list[str]:
    """Non-empty, non-comment lines."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@lru_cache(maxsize=None)
def persona_presets() -> dict[str, dict]:
    return json.loads(_asset_text("personas.json"))


def persona_pair(name: str = DEFAULT_PAIR) -> PersonaPair:
    presets = persona_presets()
    if name not in presets:
        raise SteerhealError(f"Unknown persona preset {name!r}: choose one of {', '.join(presets)}.")
    return PersonaPair(pos=presets[name]["pos"], neg=presets[name]["neg"], name=name)


def default_contexts() -> list[str]:
    return read_lines(_asset_text("contexts.txt"))


def axis_prompts() -> list[str]:
    return read_lines(_asset_text("axis_prompts.txt"))


def probe_prompts() -> list[str]:
    return read_lines(_asset_text("probes.txt"))


def generation_prompts(pair: str | None = DEFAULT_PAIR) -> list[str]:
    """The prompts that generate a pair's training completions: its own pool when one ships
    (assets/generation_prompts/<pair>.txt), else the care-vs-authority dilemmas."""
    own = resources.files("steerheal").joinpath("assets", "generation_prompts", f"{pair}.txt")
    if pair and own.is_file():
        return read_lines(own.read_text(encoding="utf-8"))
    return axis_prompts()
