import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: unknown ids fail at once instead of retrying
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

# The real tinymfv data: STEERHEAL_TINYMFV_DIR (make test sets it), else ../shared beside the checkout.
_SHARED_TINYMFV = Path(__file__).resolve().parents[2] / "shared" / "tinymfv"
TINYMFV_DATA = os.environ.get("STEERHEAL_TINYMFV_DIR") or (str(_SHARED_TINYMFV) if _SHARED_TINYMFV.is_dir() else None)


def tiny_run_config(**overrides):
    """A one-round run small enough for 2 CPU cores (tens of seconds on the bundled model)."""
    from dataclasses import replace

    from steerheal.heal import HealConfig
    from steerheal.loop import RunConfig

    tiny = RunConfig(rounds=1, n_completions=6, max_new_tokens=20, think_tokens=1, eval_limit=3,
                     data_dir=TINYMFV_DATA, n_contexts=8, probe_tokens=8,
                     heal=HealConfig(rank=8, lora_alpha=16, epochs=1))
    return replace(tiny, **overrides)


@pytest.fixture(scope="session")
def lm():
    from steerheal.models import load_model

    return load_model("bundled")


@pytest.fixture(scope="session")
def care_vector(lm):
    from steerheal.presets import default_contexts, persona_pair
    from steerheal.vectors import extract_vector

    return extract_vector(lm, persona_pair("care-over-authority"), default_contexts())


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from steerheal.models import bundled_model_dir

    return AutoTokenizer.from_pretrained(bundled_model_dir())
