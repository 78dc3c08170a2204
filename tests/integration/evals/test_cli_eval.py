import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def test_eval_json_on_a_small_subset():
    res = run_cli("eval", "--think-tokens", "2", "--limit", "7", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for key in ("auth_nats", "care_nats", "coherence", "top1_acc", "profile", "n_rows"):
        assert key in out
    assert out["n_rows"] == 7 and len(out["profile"]) == 7
    assert out["protocol"] == "tinymfv"
    assert out["warning"] and "not meaningful" in out["warning"]


def test_eval_table_says_when_numbers_are_not_meaningful():
    res = run_cli("eval", "--think-tokens", "2", "--limit", "7", "--persona-prompt")
    assert res.returncode == 0, res.stderr
    assert "auth_nats" in res.stdout and "WARNING" in res.stdout and "stage prompted" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["--config", "modern"], "Unknown tinymfv config"),
    (["--condition", "sideways"], "Unknown tinymfv condition"),
    (["--think-tokens", "0"], "T must be an integer >= 1"),
    (["--limit", "500"], "larger than the data"),
    (["--data", "/tmp"], "has no vignettes_classic_other_violate.jsonl"),
    (["--vector", "x.safetensors"], "needs both"),
    (["--protocol", "exact"], "invalid choice: 'exact'"),
])
def test_eval_bad_input_exit_code_2(args, message):
    res = run_cli("eval", *args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
