"""Every `steerheal` command once on the bundled model, with the smallest settings that still do
the real work: the inner loop's check that nothing is broken end to end (`make test-fast`).
The commands run through the CLI's `main` in this process; the last test starts real
interpreters to check that the console script and `python -m steerheal.cli` pass on the exit
codes (0, and 2 with one error line and no traceback)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from steerheal import jobs
from steerheal.store import Store
from tests.conftest import KEEP_ALL_FILTERS_TOML, TINY_INSTRUMENTS_TOML, TINYMFV_DATA, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.smoke]
# Every completion kept, so the one round always has enough to train on.
TINY_RUN = """
tinymfv = "subset"
rounds = 1
n_completions = 4
max_new_tokens = 8
eval_limit = 1
think_tokens = 1
n_contexts = 2
probe_tokens = 2
""" + TINY_INSTRUMENTS_TOML + """
[heal]
epochs = 1
rank = 4
lora_alpha = 8
""" + KEEP_ALL_FILTERS_TOML


def ok(*args) -> str:
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke")


@pytest.fixture(scope="module")
def vector_file(work) -> Path:
    ctx = work / "contexts.txt"
    ctx.write_text("How are you?\nWhat should I cook tonight?\n")
    out = json.loads(ok("vector", "--out", work / "v.safetensors", "--contexts", ctx, "--json"))
    assert out["n_contexts"] == 2 and len(out["norms"]) == 30
    return work / "v.safetensors"


@pytest.fixture(scope="module")
def finished_run(work) -> Path:
    (work / "run.toml").write_text(TINY_RUN)
    db = work / "runs.db"
    out = ok("run", "--config", work / "run.toml", "--db", db, *(["--data", TINYMFV_DATA] if TINYMFV_DATA else []))
    assert out.startswith("run 1") and "status: completed" in out
    return db


def test_prepare_vector_steer_and_export_vector(work, vector_file):
    assert "bundled model ready" in ok("prepare")
    out = json.loads(ok("steer", "--prompt", "Should I report my boss?", "--alpha", "0", "--alpha", "4",
                        "--vector", vector_file, "--max-new-tokens", "4", "--greedy", "--json"))
    assert out["steered"]["0"] == out["base"] and out["steered"]["4"]
    assert "llama-cli" in ok("export-vector", vector_file, "--gguf", work / "v.gguf")
    assert (work / "v.gguf").stat().st_size > 0


def test_eval_on_a_stratified_subset():
    out = json.loads(ok("eval", "--think-tokens", "1", "--limit", "7", "--json"))
    assert out["n_rows"] == 7 and out["stage"] == "base" and set(out["profile"]) >= {"Care", "Authority"}


def test_the_axis_eval_prints_one_json_object_last(vector_file):
    lines = ok("axis", "--pair", "love-humanity", "--limit", "4", "--vector", vector_file, "--alpha", "2",
               "--json").splitlines()
    out = json.loads(lines[-1])
    assert out["n"] == 4 and out["stage"] == "steered" and out["ci_low"] <= out["mean"] <= out["ci_high"]
    assert 0 <= out["share_positive"] <= 1


def test_run_runs_report_export_and_worker(work, finished_run):
    db = finished_run
    listed = json.loads(ok("runs", "--db", db, "--json"))
    assert [(r["id"], r["status"], r["rounds_completed"]) for r in listed] == [(1, "completed", 1)]
    summary = json.loads(ok("summary", "1", "--db", db, "--json").splitlines()[-1])
    assert {(r["round"], r["stage"]) for r in summary["table"]} == {(-1, "base"), (-1, "prompted"), (0, "steered"),
                                                                    (0, "healed")}
    assert all(q["verdict"] in ("yes", "no", "unclear") for q in summary["questions"])
    ok("report", "1", "--out", work / "report.html", "--db", db)
    assert "Do you love humanity" in (work / "report.html").read_text()
    manifest = json.loads(ok("export", "1", "--round", "0", "--out", work / "export", "--db", db, "--no-merged",
                             "--json"))
    assert manifest["adapters"] == ["adapters/round0"]
    # the worker takes a queued job (an export: the cheapest kind) and exits with --once
    job_id = jobs.submit(Store(db), "export", {"run_id": 1, "round": 0, "out": str(work / "by-worker"),
                                               "merged": False}, run_id=1)
    ok("worker", "--db", db, "--once", "--poll", "0.1")
    assert Store(db).job(job_id)["status"] == "completed"
    assert (work / "by-worker" / "adapters" / "round0" / "adapter_config.json").is_file()


def test_the_console_script_passes_exit_codes_on(tmp_path):
    script = Path(sys.executable).parent / "steerheal"
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "steerheal.cli"]
    good = subprocess.run([*entry, "runs", "--db", str(tmp_path / "runs.db"), "--json"], capture_output=True,
                          text=True, timeout=120)
    assert good.returncode == 0 and json.loads(good.stdout) == [], good.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-m", "steerheal.cli", "steer", "--prompt", "hi", "--alpha", "nan"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr[-2000:]
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("steerheal: error: --alpha") and "Traceback" not in bad.stderr
