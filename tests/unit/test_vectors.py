import pytest
import torch
from safetensors.torch import save_file

from steerheal.errors import SteerhealError
from steerheal.vectors import SteeringVector


def make_vector():
    torch.manual_seed(0)
    return SteeringVector(torch.randn(6, 8), {"model_id": "m", "pos": "a", "neg": "b", "n_contexts": 3})


def test_save_load_round_trip(tmp_path):
    v = make_vector()
    path = v.save(tmp_path / "v.safetensors")
    w = SteeringVector.load(path)
    assert torch.equal(v.directions, w.directions)
    assert w.meta["model_id"] == "m" and w.meta["n_contexts"] == 3
    assert not list(tmp_path.glob(".vector-*"))  # no temp file left behind


def test_negation_and_scaling():
    v = make_vector()
    assert torch.equal((-v).directions, -v.directions)
    assert torch.allclose((2.5 * v).directions, v.directions * 2.5)
    assert pytest.approx((v * 2.5).norms) == [n * 2.5 for n in v.norms]


def test_random_control_keeps_norms_but_not_direction():
    v = make_vector()
    r = v.random_like(seed=1)
    assert pytest.approx(r.norms, rel=1e-5) == v.norms
    assert abs(v.mean_cosine(r)) < 0.9


def test_loading_a_foreign_file_is_a_clear_error(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(SteerhealError, match="no 'directions' tensor"):
        SteeringVector.load(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(SteerhealError, match="not a readable safetensors"):
        SteeringVector.load(junk)
    with pytest.raises(SteerhealError, match="does not exist"):
        SteeringVector.load(tmp_path / "missing.safetensors")


def test_non_finite_vectors_are_refused(tmp_path):
    path = tmp_path / "nan.safetensors"
    save_file({"directions": torch.full((2, 2), float("nan"))}, str(path))
    with pytest.raises(SteerhealError, match="finite"):
        SteeringVector.load(path)
