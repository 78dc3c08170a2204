import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: unknown ids fail at once instead of retrying
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


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
