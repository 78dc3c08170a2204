import math

import pytest

from steerheal.config import GenerationConfig, LayerBand, PersonaPair, SteerConfig, persona_system_prompt
from steerheal.errors import SteerhealError


def test_fraction_band_matches_the_science_presets():
    # SCIENCE.md: 0.45-0.55 of depth is layers 15-17 of gemma-3-4b-it's 34.
    assert LayerBand("0.45-0.55").resolve(34) == [15, 16, 17]
    assert LayerBand("0.45-0.55").resolve(30) == [13, 14, 15]


def test_index_bands():
    assert LayerBand("13-15").resolve(30) == [13, 14, 15]
    assert LayerBand("3,1,2").resolve(30) == [1, 2, 3]
    assert LayerBand("7").resolve(30) == [7]


@pytest.mark.parametrize("spec", ["28-35", "0.5-1.5", "40", "", "a-b", "0.6-0.4", "-3"])
def test_bad_bands_say_what_to_change(spec):
    with pytest.raises(SteerhealError) as err:
        LayerBand(spec).resolve(30)
    assert "layer" in str(err.value).lower() or "band" in str(err.value).lower() or "fraction" in str(err.value).lower()


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf, "x"])
def test_non_finite_alpha_is_rejected(alpha):
    with pytest.raises(SteerhealError, match="alpha"):
        SteerConfig(alpha=alpha).validate()


def test_persona_validation():
    with pytest.raises(SteerhealError, match="non-empty"):
        PersonaPair(pos=" ", neg="someone").validate()
    with pytest.raises(SteerhealError, match="identical"):
        PersonaPair(pos="Someone kind", neg="someone kind").validate()


def test_persona_system_prompt():
    assert persona_system_prompt("someone who cares") == "You are someone who cares."
    assert persona_system_prompt("You are a pirate!") == "You are a pirate!"


def test_generation_defaults_follow_the_science():
    g = GenerationConfig()
    assert (g.temperature, g.top_p, g.top_k) == (1.0, 0.95, 64)
    with pytest.raises(SteerhealError):
        GenerationConfig(max_new_tokens=0).validate()
