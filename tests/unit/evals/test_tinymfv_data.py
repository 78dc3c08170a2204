import json
from collections import Counter
from pathlib import Path

import pytest

from steerheal.errors import SteerhealError
from steerheal.evals.tinymfv_data import (DEMO_SOURCE, FOUNDATIONS, demo_set, load_vignettes, parse_rows,
                                          stratified_subset)

SHARED = Path(__file__).resolve().parents[4] / "shared" / "tinymfv"
GOOD = {"id": "a", "text": "You see someone.", "foundation_coarse": "Care", **{f"human_{k}": 10 for k in
        ["Care", "Fairness", "Loyalty", "Authority", "Sanctity", "Liberty", "SocialNorms"]}}


def test_rows_are_validated_with_file_and_line():
    bad_foundation = json.dumps({**GOOD, "foundation_coarse": "Purity"})
    with pytest.raises(SteerhealError, match=r"f.jsonl:2: unknown foundation 'Purity'"):
        parse_rows([json.dumps(GOOD), bad_foundation], "f.jsonl")
    missing = {k: v for k, v in GOOD.items() if k != "text"}
    with pytest.raises(SteerhealError, match=r"f.jsonl:1: missing field\(s\) text"):
        parse_rows([json.dumps(missing)], "f.jsonl")
    with pytest.raises(SteerhealError, match=r"f.jsonl:1: not valid JSON"):
        parse_rows(["{oops"], "f.jsonl")


def test_human_distribution_is_normalised_and_labelled():
    row = parse_rows([json.dumps({**GOOD, "human_Authority": 70})], "f")[0]
    assert sum(row.human) == pytest.approx(1.0)
    assert FOUNDATIONS[row.human_label] == "Authority"


def test_demo_set_is_labelled_and_covers_every_foundation():
    demo = demo_set()
    counts = Counter(r.foundation for r in demo.rows)
    assert set(counts) == set(FOUNDATIONS) and min(counts.values()) >= 3
    assert demo.source == DEMO_SOURCE and not demo.comparable and "NOT comparable" in demo.source


def test_explicit_dir_and_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "vignettes_classic_other_violate.jsonl").write_text(json.dumps(GOOD) + "\n")
    monkeypatch.delenv("STEERHEAL_TINYMFV_DIR", raising=False)
    assert len(load_vignettes(data_dir=tmp_path).rows) == 1
    monkeypatch.setenv("STEERHEAL_TINYMFV_DIR", str(tmp_path))
    data = load_vignettes()
    assert len(data.rows) == 1 and str(tmp_path.resolve()) in data.source


def test_offline_without_data_falls_back_to_demo(monkeypatch):
    monkeypatch.delenv("STEERHEAL_TINYMFV_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_vignettes().source == DEMO_SOURCE


@pytest.mark.parametrize("kwargs, message", [
    ({"config": "modern"}, "Unknown tinymfv config 'modern'"),
    ({"condition": "both"}, "Unknown tinymfv condition 'both'"),
    ({"config": "scifi", "data_dir": "/nonexistent"}, "does not exist"),
])
def test_bad_choices_are_clear_errors(kwargs, message):
    with pytest.raises(SteerhealError, match=message):
        load_vignettes(**kwargs)


def test_dir_without_the_file_is_a_clear_error(tmp_path):
    with pytest.raises(SteerhealError, match="has no vignettes_scifi_self_violate.jsonl"):
        load_vignettes("scifi", "self_violate", data_dir=tmp_path)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/tinymfv not present")
def test_stratified_subset_keeps_foundation_shares_and_is_not_a_prefix():
    rows = load_vignettes(data_dir=SHARED).rows
    assert len(rows) == 132 and all(r.foundation == "Care" for r in rows[:32])  # why a prefix is wrong
    subset = stratified_subset(rows, 28, seed=0)
    counts = Counter(r.foundation for r in subset)
    assert len(subset) == 28 and set(counts) == set(FOUNDATIONS)
    assert counts["Care"] in (6, 7) and all(3 <= c <= 4 for f, c in counts.items() if f != "Care")
    assert subset != rows[:28]
    assert stratified_subset(rows, 28, seed=0) == subset  # seeded
    ids = [r.id for r in rows]
    assert [ids.index(r.id) for r in subset] == sorted(ids.index(r.id) for r in subset)  # original order


def test_subset_size_errors():
    rows = demo_set().rows
    with pytest.raises(SteerhealError, match="larger than the data"):
        stratified_subset(rows, len(rows) + 1)
    with pytest.raises(SteerhealError, match="positive integer"):
        stratified_subset(rows, 0)
