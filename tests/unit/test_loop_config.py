"""Run settings that cannot work on this machine are refused before anything is stored."""

import pytest
import torch

from steerheal.errors import SteerhealError
from steerheal.loop import RunConfig
from steerheal.store import Store
from tests.conftest import run_cli


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine 4-bit is allowed")
def test_4bit_on_a_cpu_machine_is_a_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(SteerhealError, match="4-bit loading needs a CUDA GPU"):
        RunConfig(load_in_4bit=True).validate()
    db = tmp_path / "runs.db"
    res = run_cli("run", "--4bit", "--db", db)
    assert res.returncode == 2 and "drop --4bit" in res.stderr, res.stderr[-1500:]
    assert Store(db).runs() == []


def test_4bit_must_be_a_boolean():
    with pytest.raises(SteerhealError, match="load_in_4bit must be true or false"):
        RunConfig.from_dict({"load_in_4bit": "yes"}).validate()


def test_tinymfv_can_be_switched_off_but_not_misspelled():
    assert RunConfig(tinymfv="off").validate().tinymfv == "off"
    with pytest.raises(SteerhealError, match="use auto, off, subset, full"):
        RunConfig(tinymfv="of").validate()
    assert RunConfig.from_dict({"tinymfv": "off"}).tinymfv == "off"


def test_tinymfv_modes_resolve_per_model():
    """auto: off on the bundled model (it cannot answer the format), full elsewhere; "on" from
    older runs means full; subset uses eval_limit rows or 36."""
    assert RunConfig().tinymfv_mode() == "off"
    assert RunConfig(model="google/gemma-3-4b-it").tinymfv_mode() == "full"
    assert RunConfig(tinymfv="on").tinymfv_mode() == "full"
    assert RunConfig(tinymfv="subset").tinymfv_limit() == 36
    assert RunConfig(tinymfv="subset", eval_limit=20).tinymfv_limit() == 20
    assert RunConfig(tinymfv="off", eval_limit=20).tinymfv_limit() is None


@pytest.mark.parametrize("setting, message", [
    ({"incoherence_ceiling": 0}, "incoherence_ceiling must be > 0"),
    ({"drift_tokens": 1}, "drift_tokens must be an integer"),
    ({"axis_split": "test"}, "axis_split must be dev, eval or all"),
    ({"axis_limit": 1}, "axis_limit must be at least 2"),
])
def test_instrument_settings_are_checked(setting, message):
    with pytest.raises(SteerhealError, match=message):
        RunConfig.from_dict(setting).validate()
