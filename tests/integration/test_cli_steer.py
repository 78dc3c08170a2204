"""The `steerheal steer` and `steerheal vector` commands, through the CLI's own `main` (the
console script's exit codes in a real interpreter are checked in test_cli_smoke.py)."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def test_steer_json_has_base_and_each_alpha_as_given(tmp_path, care_vector):
    path = care_vector.save(tmp_path / "care.safetensors")
    res = run_cli("steer", "--prompt", "Is it ever okay to break a rule?", "--alpha", "0", "--alpha", "3.0",
                  "--greedy", "--max-new-tokens", "24", "--vector", str(path), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out) == {"base", "steered"} and set(out["steered"]) == {"0", "3.0"}
    assert out["steered"]["0"] == out["base"]
    assert out["steered"]["3.0"] != out["base"]


def test_vector_command_saves_and_reports_norms(tmp_path):
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("# my contexts\nHow are you?\nWhat is a good book?\n")
    res = run_cli("vector", "--out", str(tmp_path / "v.safetensors"), "--contexts", str(ctx), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["norms"]) == 30 and out["n_contexts"] == 2
    assert (tmp_path / "v.safetensors").exists()


@pytest.mark.parametrize("args, message", [
    (["steer", "--prompt", "hi", "--alpha", "nan"], "--alpha"),
    (["steer", "--prompt", "hi", "--alpha", "inf"], "--alpha"),
    (["steer", "--prompt", "hi", "--layers", "25-40"], "outside the model"),
    (["steer", "--prompt", "hi", "--model", "no-such-org/no-such-model"], "Cannot load model"),
    (["steer", "--prompt", "hi", "--model", "./no/such/dir"], "does not exist"),
    (["vector", "--out", "x.safetensors", "--pos", "kind", "--neg", "kind"], "identical"),
    (["vector", "--out", "x.safetensors", "--pos", ""], "non-empty"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    res = run_cli(*args)
    assert res.returncode == 2
    err_lines = [l for l in res.stderr.strip().splitlines() if l.startswith("steerheal: error:")]
    assert len(err_lines) == 1 and message in err_lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_empty_context_file_is_refused(tmp_path):
    ctx = tmp_path / "empty.txt"
    ctx.write_text("# nothing\n\n")
    res = run_cli("vector", "--out", str(tmp_path / "v.safetensors"), "--contexts", str(ctx))
    assert res.returncode == 2 and "holds no messages" in res.stderr
