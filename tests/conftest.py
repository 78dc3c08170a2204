import contextlib
import fcntl
import io
import os
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: unknown ids fail at once instead of retrying
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: each worker, and every process its tests
    # start, computes on one thread. Two workers with two spinning OpenMP threads each run
    # several times slower than one alone.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from pathlib import Path

import pytest

# The real tinymfv data: STEERHEAL_TINYMFV_DIR (make test sets it), else ../shared beside the checkout.
_SHARED_TINYMFV = Path(__file__).resolve().parents[2] / "shared" / "tinymfv"
TINYMFV_DATA = os.environ.get("STEERHEAL_TINYMFV_DIR") or (str(_SHARED_TINYMFV) if _SHARED_TINYMFV.is_dir() else None)


# The test files that take longest (seconds on one thread, make test's workers), started first
# so that two workers finish together (make test passes --no-loadscope-reorder, which keeps this order).
SLOW_FIRST = ("test_sweeps.py",  # ~250 s: a 2x2 sweep on both backends and a cancelled one, on Ray
              "test_tinymfv_eval.py",  # ~190 s on one worker: the full 132-row reference eval
              "test_resume_and_export.py",  # ~150: the crash sequence
              "test_long_run.py",  # ~100
              "test_heal_bake.py",  # ~110
              "test_dose.py", "test_vectors_and_steering.py", "test_storage_errors.py", "test_axis_and_drift.py",
              "test_worker.py", "test_loop.py", "test_cli_smoke.py")  # ~50-100 each


def pytest_collection_modifyitems(items):
    def weight(item) -> int:
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=weight)  # stable: tests keep their order within a file


# The instruments at their smallest (2 axis items, 2 neutral prompts of 4 tokens, absorption over 2
# contexts): tiny runs
# still measure every stage with each, in seconds. As run settings, a run.toml block, CLI flags.
TINY_INSTRUMENTS = dict(axis_limit=2, drift_prompts=2, drift_tokens=4, absorption_contexts=2)
TINY_INSTRUMENTS_TOML = "".join(f"{k} = {v}\n" for k, v in TINY_INSTRUMENTS.items())
TINY_INSTRUMENT_FLAGS = [x for k, v in TINY_INSTRUMENTS.items() for x in (f"--{k.replace('_', '-')}", str(v))]

# Filters that keep every completion, as a run.toml table: tiny runs whose purpose is not the
# filters then always have enough kept completions to train on.
KEEP_ALL_FILTERS_TOML = """
[filters]
max_tail_perplexity = 1e9
max_repetition = 1.0
reject_narration = false
reject_refusal = false
"""


def tiny_run_config(**overrides):
    """A one-round run small enough for 2 CPU cores (tens of seconds on the bundled model)."""
    from dataclasses import replace

    from steerheal.heal import HealConfig
    from steerheal.loop import RunConfig

    tiny = RunConfig(rounds=1, n_completions=6, max_new_tokens=20, think_tokens=1, eval_limit=3, tinymfv="subset",
                     data_dir=TINYMFV_DATA, n_contexts=8, probe_tokens=8, **TINY_INSTRUMENTS,
                     heal=HealConfig(rank=8, lora_alpha=16, epochs=1))
    return replace(tiny, **overrides)


@pytest.fixture(scope="session")
def lm():
    from steerheal.models import load_model

    return load_model("bundled")


@pytest.fixture(scope="session")
def care_vector(lm, tmp_path_factory):
    """The care-over-authority vector from all 80 bundled contexts. Under pytest-xdist the first
    worker to ask extracts it and the other loads that file (exact: safetensors round trip), so
    the suite pays for one extraction."""
    from steerheal.presets import default_contexts, persona_pair
    from steerheal.vectors import SteeringVector, extract_vector

    def extract():
        return extract_vector(lm, persona_pair("care-over-authority"), default_contexts())

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return extract()
    shared = tmp_path_factory.getbasetemp().parent  # this run's folder, above each worker's own
    path = shared / "care-vector.safetensors"
    with open(shared / "care-vector.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return SteeringVector.load(path)
        vector = extract()
        vector.save(path)
        return vector


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from steerheal.models import bundled_model_dir

    return AutoTokenizer.from_pretrained(bundled_model_dir())


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args) -> CliResult:
    """`steerheal ARGS` run in this process: the same `main` the console script runs, without a
    new interpreter importing torch for every case (tests/integration/test_cli_smoke.py runs the
    real `python -m steerheal.cli` in subprocesses). An unexpected exception propagates and fails
    the test, which is stricter than looking for a traceback in stderr."""
    from steerheal.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse errors exit(2); --help exits 0
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())
