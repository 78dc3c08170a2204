"""A disk that fills up or a data folder that turns read-only in the middle of a run: the run
stops with a message saying what happened and how to continue, the DB stays intact, and the
run resumes to completion once the disk is writable again."""

import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steerheal.store import Store
from tests.conftest import TINY_INSTRUMENT_FLAGS

pytestmark = pytest.mark.integration
# One round that trains and saves a 12 MB adapter; no tinymfv evals (storage is what this tests).
ONE_ROUND = ["--rounds", "1", "--n-completions", "4", "--max-new-tokens", "12", "--epochs", "1", "--tinymfv", "off",
             "--n-contexts", "4", "--probe-tokens", "4", *TINY_INSTRUMENT_FLAGS]
CLI = [sys.executable, "-m", "steerheal.cli"]


def _intact(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        for path, in conn.execute("select path from artifacts"):
            assert (db.parent / path).exists(), f"the DB points at a missing file: {path}"


def _resume_completes(db: Path) -> None:
    res = subprocess.run([*CLI, "run", "--db", str(db), "--resume", "1"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    store = Store(db)
    assert store.run(1)["status"] == "completed"
    assert [r["round"] for r in store.rows("rounds", 1) if r["status"] == "completed"] == [0]
    assert store.artifact(1, 0, "adapter") is not None
    assert not list(store.artifact_dir(1).rglob(".*")), "temporary files left behind"


def test_a_full_disk_fails_the_run_clearly_and_it_resumes_once_there_is_room(tmp_path):
    """The process may not write a file over 6 MB (RLIMIT_FSIZE, what a nearly full disk looks
    like to one writer): the round's LoRA adapter (about 12 MB) cannot be saved."""
    db = tmp_path / "runs.db"

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the EFBIG error instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (6 * 2**20, 6 * 2**20))

    res = subprocess.run([*CLI, "run", "--db", str(db), *ONE_ROUND], capture_output=True, text=True, timeout=900,
                         preexec_fn=small_files)
    assert res.returncode == 2, res.stderr[-2000:]
    message = [line for line in res.stderr.splitlines() if line.startswith("steerheal: error:")][-1]
    assert message.startswith("steerheal: error: Could not write") and "--resume 1" in message, message
    assert "Traceback" not in res.stderr
    run = Store(db).run(1)
    assert run["status"] == "failed" and "resume" in run["error"]
    _intact(db)
    assert Store(db).artifact(1, 0, "adapter") is None
    assert len(Store(db).rows("completions", 1)) == 4  # what was stored before the failure stays
    _resume_completes(db)


def _can_remount_read_only() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind -o ro /tmp /tmp"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_remount_read_only(), reason="needs root and mount namespaces (unshare -m)")
def test_a_data_folder_turning_read_only_mid_run_stops_it_cleanly_and_it_resumes(tmp_path):
    """In a private mount namespace the data folder turns read-only while round 0 heals."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / "runs.db"
    args = " ".join(f"'{a}'" for a in [*CLI, "run", "--db", str(db), *ONE_ROUND])
    # A read-only bind mount over the folder: files the run already has open stay writable (as
    # on a disk remounted read-only under a running program that keeps its descriptors), every
    # new file fails with EROFS.
    script = (f"{args} & pid=$!; "
              f"while ! grep -q heal {tmp_path}/stage 2>/dev/null; do sleep 0.1; done; "
              f"mount --bind -o ro {data} {data} || kill $pid; wait $pid")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # tell the namespace when the heal starts
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                row = conn.execute("select stage from runs where id = 1").fetchone()
            if row and "heal" in row[0]:
                (tmp_path / "stage").write_text(row[0])
                break
        except sqlite3.Error:
            pass
        time.sleep(0.1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err[-2000:]
    message = [line for line in err.splitlines() if line.startswith("steerheal: error:")][-1]
    assert "Could not write" in message and "read-only" in message and "--resume 1" in message, message
    assert "Traceback" not in err
    _intact(db)
    assert Store(db).run(1)["status"] in ("running", "failed")  # a read-only DB cannot even be marked failed
    _resume_completes(db)
