"""A 2-round CLI run killed with SIGKILL in the middle of a heal step, resumed, then exported
and reported: what a user gets after a crash is the same run, whole, with no duplicates."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from steerheal.store import Store
from tests.conftest import TINYMFV_DATA

pytestmark = pytest.mark.integration
TINY = ["--rounds", "2", "--n-completions", "6", "--max-new-tokens", "20", "--epochs", "2", "--eval-limit", "7",
        "--think-tokens", "2", "--n-contexts", "16", "--probe-tokens", "24"] + (["--data", TINYMFV_DATA] if TINYMFV_DATA else [])


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "steerheal.cli", *args], capture_output=True, text=True,
                          timeout=900, **kw)


def _stage(db: Path) -> str | None:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("select stage from runs order by id desc limit 1").fetchone()
            return row[0] if row else None
    except sqlite3.Error:
        return None


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """Start the run, SIGKILL it during round 1's heal, resume it; yields (db, run_id, stage at kill)."""
    db = tmp_path_factory.mktemp("resume") / "runs.db"
    proc = subprocess.Popen([sys.executable, "-m", "steerheal.cli", "run", "--db", str(db), *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 900
    stage = None
    while time.time() < deadline and proc.poll() is None:
        stage = _stage(db) if db.exists() else None
        if stage and stage.startswith("round 1: heal step"):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before its heal step could be interrupted (stage {stage!r})"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = int(proc.stdout.readline().split()[1])
    resumed = _cli("run", "--db", str(db), "--resume", str(run_id))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return db, run_id, stage


def test_killed_mid_heal_resumes_to_the_same_rounds_without_duplicates(resumed_run):
    db, run_id, stage_at_kill = resumed_run
    assert stage_at_kill.startswith("round 1: heal step")
    store = Store(db)
    run = store.run(run_id)
    assert run["status"] == "completed"
    assert [r["round"] for r in store.rows("rounds", run_id) if r["status"] == "completed"] == [0, 1]
    assert len(store.rows("completions", run_id)) == 12
    assert sorted((e["round"], e["stage"]) for e in store.rows("evals", run_id)) == [
        (-1, "base"), (-1, "prompted"), (0, "healed"), (0, "steered"), (1, "healed"), (1, "steered")]
    assert len(store.rows("probes", run_id)) == 3 * len(store.rows("probes", run_id, -1))
    for round_ in (0, 1):
        steps = [t["step"] for t in store.rows("train_logs", run_id, round_)]
        assert sorted(steps) == list(range(1, len(steps) + 1))
    kinds = sorted((a["round"], a["kind"]) for a in store.rows("artifacts", run_id))
    assert kinds == [(0, "adapter"), (0, "vector.safetensors"), (1, "adapter"), (1, "vector.safetensors")]
    leftovers = [p for p in store.artifact_dir(run_id).rglob(".*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_export_writes_loadable_adapters_and_a_merged_model_matching_round_k(resumed_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from steerheal.export import model_at_round
    from steerheal.models import load_model
    from steerheal.vectors import SteeringVector

    db, run_id, _ = resumed_run
    out = tmp_path / "export"
    res = _cli("export", str(run_id), "--round", "1", "--out", str(out), "--db", str(db), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads(res.stdout)
    assert manifest["adapters"] == ["adapters/round0", "adapters/round1"]
    for name in manifest["adapters"]:
        PeftModel.from_pretrained(load_model("bundled").model, str(out / name))
    SteeringVector.load(out / "vector.safetensors")
    assert manifest["vector_gguf"] == "vector.gguf" and (out / "vector.gguf").stat().st_size > 0
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", torch_dtype=torch.float32).eval()
    lm = model_at_round(Store(db), run_id, 1)
    ids = lm.tokenizer("Do you love humanity? Tell me honestly.", return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = lm.model(ids).logits, merged(ids).logits
        base = load_model("bundled").model(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-3)
    assert (ours - base).abs().max() > 1e-3  # the adapters really changed the model

    again = _cli("export", str(run_id), "--round", "1", "--out", str(out), "--db", str(db))
    assert again.returncode == 2 and "not empty" in again.stderr
    missing = _cli("export", str(run_id), "--round", "5", "--out", str(tmp_path / "x"), "--db", str(db))
    assert missing.returncode == 2 and "no completed round 5" in missing.stderr


def test_report_is_one_html_page_with_charts_and_probe_answers(resumed_run, tmp_path):
    db, run_id, _ = resumed_run
    out = tmp_path / "report.html"
    res = _cli("report", str(run_id), "--out", str(out), "--db", str(db))
    assert res.returncode == 0, res.stderr[-2000:]
    page = out.read_text()
    assert "Do you love humanity" in page and "auth_nats per round" in page and "vega" in page.lower()
    assert "cdn.jsdelivr" not in page, "the report must work offline (Vega inlined)"
    bad = _cli("report", "999", "--out", str(out), "--db", str(db))
    assert bad.returncode == 2 and "No run 999" in bad.stderr
