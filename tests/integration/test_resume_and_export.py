"""Crash safety: a 2-round CLI run is killed with SIGKILL at seven named points across
generation, storing, training, baking (twice), the offline incoherence and the tinymfv eval,
plus once at a moment picked by
watching the store; after every kill the DB is intact and points at no missing file, and the
run resumed each time ends exactly like an uninterrupted run with the same seed: same rounds,
same rows, no duplicates, no orphaned files. Then export and report work on it."""

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

from steerheal.faults import CRASH_ENV
from steerheal.store import Store
from tests.conftest import KEEP_ALL_FILTERS_TOML, TINY_INSTRUMENTS_TOML, TINYMFV_DATA

pytestmark = pytest.mark.integration
# Tiny settings, every completion kept (so each round trains on all four: the filters are not
# what this tests), two epochs so that round 0 has a heal step 2 to die in.
RUN_TOML = """
tinymfv = "subset"
rounds = 2
n_completions = 4
max_new_tokens = 8
eval_limit = 1
think_tokens = 1
n_contexts = 2
probe_tokens = 2
""" + TINY_INSTRUMENTS_TOML + """
[heal]
epochs = 2
""" + KEEP_ALL_FILTERS_TOML
# (where, what it interrupts); each is reached once the kills before it have been resumed
CRASH_POINTS = [
    ("round0:generated", "generation: completions made, none stored"),
    ("store:completions", "storing: inside the completions transaction"),
    ("round0:heal-step2", "training: after heal step 2 of round 0"),
    ("artifact-written:adapter", "baking: adapter written under a temporary name"),
    ("artifact-renamed:adapter", "baking: adapter renamed into place, not yet recorded"),
    ("round0:drift-healed", "incoherence: round 0's healed model scored, not yet stored"),
    ("round1:eval-steered", "eval: first batch of round 1's steered eval"),
]
TABLES = ("rounds", "vectors", "completions", "evals", "axis_evals", "drift_evals", "absorption", "probes",
          "train_logs", "artifacts")


def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "steerheal.cli", *args], capture_output=True, text=True,
                          timeout=900, env=env, **kw)


def _stage(db: Path) -> str | None:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("select stage from runs order by id desc limit 1").fetchone()
            return row[0] if row else None
    except sqlite3.Error:
        return None


def _check_after_kill(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        for path, in conn.execute("select path from artifacts"):
            assert (db.parent / path).exists(), f"the DB points at a missing file: {path}"
        for round_, n in conn.execute("select round, count(*) from completions group by round"):
            assert n == 4, f"round {round_} holds {n} of 4 completions: a partial write"


def _kill_when(db: Path, args: list[str], stage_prefix: str) -> str:
    """Run the CLI and SIGKILL it once the store's stage starts with stage_prefix."""
    proc = subprocess.Popen([sys.executable, "-m", "steerheal.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, stage = time.time() + 600, None
    while time.time() < deadline and proc.poll() is None:
        stage = _stage(db)
        if stage and stage.startswith(stage_prefix):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before {stage_prefix!r} (stage {stage!r})"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return stage


def _contents(store: Store, run_id: int) -> dict:
    """What a user would compare between two runs (ids and times left out)."""
    keep = {"rounds": ("round", "status"), "vectors": ("round", "norms", "cos_v0"),
            "completions": ("round", "idx", "prompt", "alpha", "text", "auto_verdict", "reasons"),
            "evals": ("round", "stage", "auth_nats", "care_nats", "coherence", "top1_acc"),
            "axis_evals": ("round", "stage", "mean", "ci_low", "ci_high", "n"),
            "drift_evals": ("round", "stage", "headline", "kl_mean", "nll_excess", "repetition"),
            "absorption": ("round",),  # its values: compared with a tolerance below
            "probes": ("round", "prompt", "answer"), "train_logs": ("round", "step", "loss", "nll", "divergence"),
            "artifacts": ("round", "kind")}
    out = {}
    for table, cols in keep.items():
        rows = [tuple(round(r[c], 5) if isinstance(r[c], float) else r[c] for c in cols)
                for r in store.rows(table, run_id)]
        out[table] = sorted(rows, key=repr)
    return out


@pytest.fixture(scope="module")
def crashed_and_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    (root / "run.toml").write_text(RUN_TOML)
    tiny = ["--config", str(root / "run.toml")] + (["--data", TINYMFV_DATA] if TINYMFV_DATA else [])
    # The uninterrupted run goes on beside the crash sequence (this test mostly waits on its
    # subprocesses, so the two share the machine well); it is checked once the sequence is done.
    ref_db, ref_log = root / "ref" / "runs.db", root / "ref.log"
    with open(ref_log, "w") as out:
        ref = subprocess.Popen([sys.executable, "-m", "steerheal.cli", "run", "--db", str(ref_db), *tiny],
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        db, log = _crash_at_every_point(root, tiny)
        assert ref.wait(timeout=900) == 0, ref_log.read_text()[-2000:]
    finally:
        if ref.poll() is None:
            ref.kill()
    return db, 1, ref_db, log


def _crash_at_every_point(root: Path, tiny: list[str]) -> tuple[Path, list[str]]:
    db = root / "crashed" / "runs.db"
    log = []
    for i, (point, what) in enumerate(CRASH_POINTS):
        if point.startswith("round1:") and len(log) == i:  # once round 0 is done: a kill timed from outside
            log.append(_kill_when(db, ["run", "--db", str(db), "--resume", "1"], "round 1: heal step"))
            _check_after_kill(db)
        args = ["run", "--db", str(db), *(["--resume", "1"] if i else tiny)]
        res = _cli(*args, env={**os.environ, CRASH_ENV: point})
        assert res.returncode == -signal.SIGKILL, f"no crash at {point} ({what}): {res.stderr[-1500:]}"
        _check_after_kill(db)
        log.append(point)
    resumed = _cli("run", "--db", str(db), "--resume", "1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return db, log


@pytest.fixture(scope="module")
def resumed_run(crashed_and_reference):
    db, run_id, _, _ = crashed_and_reference
    return db, run_id


def test_killed_at_eight_points_resumes_to_the_same_run_as_an_uninterrupted_one(crashed_and_reference):
    db, run_id, ref_db, kills = crashed_and_reference
    assert len(kills) == len(CRASH_POINTS) + 1 and any(k.startswith("round 1: heal step") for k in kills)
    store, ref = Store(db), Store(ref_db)
    assert store.run(run_id)["status"] == "completed"
    assert [r["round"] for r in store.rows("rounds", run_id) if r["status"] == "completed"] == [0, 1]
    ours, theirs = _contents(store, run_id), _contents(ref, 1)
    for table in TABLES:
        assert ours[table] == theirs[table], f"{table} differs from the uninterrupted run"
    # A model rebuilt from saved adapters (and the base seen by unmerging them) differs from the one
    # trained in memory by float rounding: the absorption's cosines agree to ~1e-5, not bit for bit.
    for a, b in zip(store.rows("absorption", run_id), ref.rows("absorption", 1), strict=True):
        assert a["round"] == b["round"] and abs(a["cos"] - b["cos"]) < 1e-3 and abs(a["coef"] - b["coef"]) < 1e-3
    assert len(store.rows("completions", run_id)) == 8
    assert sorted((e["round"], e["stage"]) for e in store.rows("evals", run_id)) == [
        (-1, "base"), (-1, "prompted"), (0, "healed"), (0, "steered"), (1, "healed"), (1, "steered")]
    for table in ("axis_evals", "drift_evals"):  # the instruments too, the one killed mid-stage redone once
        assert sorted((e["round"], e["stage"]) for e in store.rows(table, run_id)) == [
            (-1, "base"), (-1, "prompted"), (0, "healed"), (0, "steered"), (1, "healed"), (1, "steered")]
    assert [a["round"] for a in store.rows("absorption", run_id)] == [0, 1]
    # no orphaned files: everything in the run's folder is recorded, and every record exists
    recorded = {(db.parent / a["path"]).resolve() for a in store.rows("artifacts", run_id)}
    on_disk = {p.resolve() for p in store.artifact_dir(run_id).glob("round-*/*")}
    assert on_disk == recorded and all(p.exists() for p in recorded)
    assert not list(store.artifact_dir(run_id).rglob(".*")), "temporary files left behind"
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_export_writes_loadable_adapters_and_a_merged_model_matching_round_k(resumed_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from steerheal.export import model_at_round
    from steerheal.models import load_model
    from steerheal.vectors import SteeringVector

    db, run_id = resumed_run
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

    card = (out / "merged" / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "| 1 | healed |" in card and '"agg": "rmse"' in card
    assert (out / "README.md").read_text() == card

    # pushing needs the network: here (offline, HF_HUB_OFFLINE=1) it is a clear error, export intact
    from steerheal.errors import SteerhealError
    from steerheal.export import push_to_hub

    with pytest.raises(SteerhealError, match="Could not push to someone/healed"):
        push_to_hub(out, "someone/healed")
    assert (out / "merged" / "config.json").is_file()
    bad = _cli("export", str(run_id), "--round", "0", "--out", str(tmp_path / "p2"), "--db", str(db),
               "--push-to-hub", "no-owner")
    assert bad.returncode == 2 and "owner/name" in bad.stderr and not (tmp_path / "p2").exists()

    again = _cli("export", str(run_id), "--round", "1", "--out", str(out), "--db", str(db))
    assert again.returncode == 2 and "not empty" in again.stderr
    missing = _cli("export", str(run_id), "--round", "5", "--out", str(tmp_path / "x"), "--db", str(db))
    assert missing.returncode == 2 and "no completed round 5" in missing.stderr


def test_report_is_one_html_page_with_charts_and_probe_answers(resumed_run, tmp_path):
    db, run_id = resumed_run
    out = tmp_path / "report.html"
    res = _cli("report", str(run_id), "--out", str(out), "--db", str(db))
    assert res.returncode == 0, res.stderr[-2000:]
    page = out.read_text()
    assert "Do you love humanity" in page and "auth_nats per round" in page and "vega" in page.lower()
    assert "cdn.jsdelivr" not in page, "the report must work offline (Vega inlined)"
    bad = _cli("report", "999", "--out", str(out), "--db", str(db))
    assert bad.returncode == 2 and "No run 999" in bad.stderr
