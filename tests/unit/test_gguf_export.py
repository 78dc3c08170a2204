"""The control-vector GGUF reads back with the gguf package, layer for layer."""

import numpy as np
import pytest
import torch

from steerheal.errors import SteerhealError
from steerheal.gguf_export import write_control_vector
from steerheal.vectors import SteeringVector
from tests.conftest import run_cli


def _field(reader, name):
    field = reader.fields[name]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if value.dtype == np.uint8 else int(value[0])


def test_control_vector_gguf_round_trips(tmp_path):
    import gguf

    directions = torch.randn(6, 16)
    vector = SteeringVector(directions, {"model_id": "x", "model_type": "llama"})
    out = write_control_vector(vector, tmp_path / "care.gguf")
    reader = gguf.GGUFReader(out)
    assert _field(reader, "general.architecture") == "controlvector"
    assert _field(reader, "controlvector.model_hint") == "llama"
    assert _field(reader, "controlvector.layer_count") == 6
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert sorted(tensors) == sorted(f"direction.{i}" for i in range(6))
    for i in range(6):
        assert np.allclose(tensors[f"direction.{i}"].reshape(-1), directions[i].numpy())
    assert not list(tmp_path.glob(".*")), "no temporary file left behind"


def test_a_vector_without_a_model_type_needs_a_hint(tmp_path):
    vector = SteeringVector(torch.randn(2, 4), {"model_id": "x"})
    with pytest.raises(SteerhealError, match="model-hint"):
        write_control_vector(vector, tmp_path / "v.gguf")
    assert write_control_vector(vector, tmp_path / "v.gguf", model_hint="gemma3").exists()


def test_export_vector_cli(tmp_path):
    path = SteeringVector(torch.randn(3, 8), {"model_id": "x", "model_type": "llama"}).save(tmp_path / "v.safetensors")
    res = run_cli("export-vector", path, "--gguf", tmp_path / "v.gguf")
    assert res.returncode == 0 and (tmp_path / "v.gguf").exists(), res.stderr
    missing = run_cli("export-vector", tmp_path / "nope.safetensors", "--gguf", tmp_path / "x.gguf")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
