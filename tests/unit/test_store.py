import os

import pytest

from steerheal.errors import SteerhealError
from steerheal.store import Store


def test_run_records_config_versions_and_commit(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run({"rounds": 3, "agg": "rmse"}, "bundled", seed=42)
    run = store.run(run_id)
    assert run["status"] == "running" and run["config"]["agg"] == "rmse" and run["seed"] == 42
    assert run["versions"]["torch"].startswith("2.") and run["git_commit"]
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unknown_run_is_a_clear_error(tmp_path):
    with pytest.raises(SteerhealError, match="No run 7"):
        Store(tmp_path / "runs.db").run(7)


def test_rewriting_a_stage_never_duplicates_rows(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run({}, "bundled", 0)
    rows = [dict(run_id=run_id, round=0, idx=i, prompt="p", alpha=1.0, text=f"t{i}", n_tokens=3,
                 scores={"repetition": 0.1}, auto_verdict=1, human_verdict=None, reasons=[]) for i in range(4)]
    store.put("completions", rows)
    store.put("completions", rows)  # a resumed stage writes the same rows again
    got = store.rows("completions", run_id, 0)
    assert len(got) == 4 and [r["text"] for r in got] == ["t0", "t1", "t2", "t3"]


def test_human_verdicts_survive_reopening(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run({}, "bundled", 0)
    store.put("completions", [dict(run_id=run_id, round=0, idx=0, prompt="p", alpha=1.0, text="t", n_tokens=1,
                                   scores={}, auto_verdict=0, human_verdict=None, reasons=["loop"])])
    cid = store.rows("completions", run_id)[0]["id"]
    store.set_human_verdict(cid, True)
    assert Store(tmp_path / "runs.db").rows("completions", run_id)[0]["human_verdict"] == 1


def test_artifacts_are_renamed_into_place_and_recorded(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run({}, "bundled", 0)

    def write(path):
        path.mkdir()
        (path / "adapter_model.safetensors").write_bytes(b"x" * 10)

    final = store.save_artifact(run_id, 0, "adapter", write)
    assert final.is_dir() and store.artifact(run_id, 0, "adapter") == final
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".")]  # no temp left

    def crash(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.save_artifact(run_id, 1, "vector", crash)
    assert store.artifact(run_id, 1, "vector") is None
    assert not (store.artifact_dir(run_id) / "round-1" / "vector").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_location_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(SteerhealError, match="Give a writable --db path"):
        Store(ro / "sub" / "runs.db")


def test_missing_directory_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SteerhealError, match="Cannot open the store"):
        Store(blocker / "runs.db")


def test_saving_again_records_the_new_file_before_deleting_the_old(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run({}, "m", 0)
    first = store.save_artifact(run_id, 0, "vector.safetensors", lambda p: p.write_text("one"))
    second = store.save_artifact(run_id, 0, "vector.safetensors", lambda p: p.write_text("two"))
    assert first != second and not first.exists() and second.read_text() == "two"
    assert second.name.startswith("vector-") and second.suffix == ".safetensors"
    assert store.artifact(run_id, 0, "vector.safetensors") == second
    assert len(store.rows("artifacts", run_id)) == 1


def test_remove_orphans_keeps_recorded_files_and_deletes_the_rest(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run({}, "m", 0)
    kept = store.save_artifact(run_id, 0, "adapter", lambda p: (p.mkdir(), (p / "w").write_text("x")))
    folder = kept.parent
    (folder / "adapter-deadbeef").mkdir()  # renamed into place, never recorded (killed just then)
    (folder / ".adapter-tmp").mkdir()  # still under its temporary name
    removed = store.remove_orphans(run_id)
    assert sorted(p.name for p in removed) == [".adapter-tmp", "adapter-deadbeef"]
    assert sorted(p.name for p in folder.iterdir()) == [kept.name]
