"""Fuzzed configs and form inputs: every case is a clear SteerhealError or a valid config, and a
refused run writes nothing."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pages.heal_form import run_config_from_form
from steerheal.errors import SteerhealError
from steerheal.loop import RunConfig, start_run
from steerheal.store import Store

NASTY_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e308, -1e-308, 3.0])
NASTY_TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\x00", "ü🙂", "0.45-0.55", "13-15",
                                                              "13-1000000000", "-5", "../../etc/passwd",
                                                              "x" * 1_000_000]))
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), NASTY_FLOATS, NASTY_TEXT,
                   st.lists(st.one_of(st.integers(-5, 5), NASTY_FLOATS, NASTY_TEXT), max_size=4))
KEYS = st.sampled_from(["model", "pair", "pos", "neg", "rounds", "alphas", "layers", "n_completions",
                        "max_new_tokens", "think_tokens", "eval_limit", "data_dir", "curation", "coherence_floor",
                        "contexts", "n_contexts", "probe_tokens", "random_control", "seed", "filters", "heal",
                        "unknown_setting"])
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])


@SETTINGS
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_any_run_config_is_valid_or_a_clear_error(data):
    try:
        cfg = RunConfig.from_dict(data).validate()
    except SteerhealError as err:
        assert str(err) and "Traceback" not in str(err)
        return
    assert cfg.rounds >= 1 and all(math.isfinite(a) for a in cfg.alphas)


FORM = dict(rounds_v=VALUES, alphas_v=NASTY_TEXT, n_v=VALUES, tokens_v=VALUES,
            curation_v=st.sampled_from(["auto", "manual", "", "maybe"]),
            agg_v=st.sampled_from(["mean", "rmse", "p95", "max", "median", ""]), tau_v=VALUES, lam_v=VALUES,
            power_v=VALUES, ref_v=st.sampled_from(["base", "prev", "other"]), rank_v=VALUES, lr_v=VALUES,
            epochs_v=VALUES, limit_v=VALUES, think_v=VALUES, probe_v=VALUES, seed_v=VALUES, random_v=st.booleans(),
            pos_v=NASTY_TEXT, neg_v=NASTY_TEXT, contexts_v=NASTY_TEXT, layers_v=NASTY_TEXT)


@SETTINGS
@given(**FORM)
def test_any_heal_form_input_is_valid_or_a_clear_error(**form):
    try:
        cfg = run_config_from_form("bundled", **form)
    except SteerhealError as err:
        assert str(err)
        return
    assert isinstance(cfg, RunConfig)


def test_a_refused_run_writes_nothing(tmp_path):
    store = Store(tmp_path / "runs.db")
    for bad in ({"rounds": math.nan}, {"alphas": ["x"]}, {"layers": "13-1000000000"}, {"heal": "oops"},
                {"contexts": [""]}, {"pos": "x" * 10, "neg": "x" * 10}):
        try:
            start_run(store, RunConfig.from_dict(bad))
        except SteerhealError:
            pass
        else:
            raise AssertionError(f"{bad} was accepted")
    assert store.db["runs"].count == 0
