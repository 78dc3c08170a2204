"""The method's questions answered from stored numbers written by hand: every verdict of every
question is reachable, and each follows the rule stated in the README."""

import pytest

from steerheal.store import Store
from steerheal.summary import run_summary
from steerheal.verdicts import NO, RULES, SLOPE_TOLERANCE, UNCLEAR, YES, answer_questions

N = 12  # units (items / prompts)


def _spread(center: float, width: float = 0.05) -> list[float]:
    return [center + width * ((k % 5) - 2) for k in range(N)]


def _store(tmp_path) -> tuple[Store, int]:
    store = Store(tmp_path / "runs.db")
    return store, store.create_run({"rounds": 3}, "bundled", 0)


def _axis(store, run_id, round_, stage, scores):
    store.put("axis_evals", [dict(run_id=run_id, round=round_, stage=stage, mean=sum(scores) / len(scores),
                                  ci_low=0, ci_high=0, share_positive=0, n=len(scores), scores=scores, meta={})])


def _drift(store, run_id, round_, stage, values):
    store.put("drift_evals", [dict(run_id=run_id, round=round_, stage=stage, headline=sum(values) / len(values),
                                   kl_rmse=sum(values) / len(values), rows=[{"kl_rmse": v} for v in values],
                                   intervals={}, meta={})])


def _completions(store, run_id, round_, kept_kl, dropped_kl):
    rows = []
    for k, (kl, kept) in enumerate([(x, True) for x in kept_kl] + [(x, False) for x in dropped_kl]):
        checks = [{"name": "tail_perplexity", "passed": kept}, {"name": "repetition", "passed": True}]
        rows.append(dict(run_id=run_id, round=round_, idx=k, prompt="p", alpha=1.0, text="t", n_tokens=3,
                         scores={"checks": checks, "kl": {"rmse": kl}}, auto_verdict=int(kept), human_verdict=None,
                         reasons=[]))
    store.put("completions", rows)


def _answers(store, run_id) -> dict:
    return {a.key: a for a in answer_questions(store, run_id)}


def test_a_run_with_nothing_measured_is_unclear_everywhere(tmp_path):
    store, run_id = _store(tmp_path)
    assert {a.verdict for a in answer_questions(store, run_id)} == {UNCLEAR}


@pytest.mark.parametrize("kept_kl, dropped_kl, verdict", [
    (_spread(0.3), _spread(1.5), YES),  # drops the divergent ones
    (_spread(1.5), _spread(0.3), NO),  # keeps the divergent ones
    (_spread(0.8, 0.6), _spread(0.8, 0.6), UNCLEAR),  # no difference
    (_spread(0.3)[:3], _spread(1.5), NO),  # too few kept to heal
    (_spread(0.3), [], UNCLEAR),  # nothing dropped: no choice made
    (_spread(0.3), [5.0, 6.0], UNCLEAR),  # two dropped: too few to compare, however far apart
])
def test_q0_can_we_filter(tmp_path, kept_kl, dropped_kl, verdict):
    store, run_id = _store(tmp_path)
    _completions(store, run_id, 0, kept_kl, dropped_kl)
    answer = _answers(store, run_id)["Q0"]
    assert answer.verdict == verdict, answer.because
    if dropped_kl:
        assert answer.figures["drop_reasons"] == {"tail_perplexity": len(dropped_kl)}


@pytest.mark.parametrize("steered, healed, verdict", [
    (1.0, 0.2, YES), (0.2, 1.0, NO), (0.5, 0.5, UNCLEAR)])
def test_q1_does_heal_cut_incoherence(tmp_path, steered, healed, verdict):
    store, run_id = _store(tmp_path)
    for r in (0, 1):
        _drift(store, run_id, r, "steered", _spread(steered, 0.3))
        _drift(store, run_id, r, "healed", _spread(healed, 0.3)[::-1] if steered == healed else _spread(healed))
    assert _answers(store, run_id)["Q1"].verdict == verdict


@pytest.mark.parametrize("per_round, noise, verdict", [
    ([0.2, 0.2, 0.21], 0.02, YES),  # flat: well under the tolerance
    ([0.2, 1.0, 1.8], 0.02, NO),  # rising 0.8 nats a round
    ([0.2, 0.2 + SLOPE_TOLERANCE, 0.2 + 2 * SLOPE_TOLERANCE], 0.6, UNCLEAR),  # at the tolerance, noisy
])
def test_q2_is_it_coherent_over_the_loop(tmp_path, per_round, noise, verdict):
    store, run_id = _store(tmp_path)
    _drift(store, run_id, -1, "base", [0.0] * N)
    for r, level in enumerate(per_round):
        _drift(store, run_id, r, "healed", [level + noise * (1 if (k * 7 + r * 3) % 4 < 2 else -1) for k in range(N)])
    answer = _answers(store, run_id)["Q2"]
    assert answer.verdict == verdict, answer.because


def test_q2_and_q3_need_two_rounds(tmp_path):
    store, run_id = _store(tmp_path)
    _drift(store, run_id, 0, "healed", _spread(0.2))
    _axis(store, run_id, 0, "healed", _spread(0.2))
    answers = _answers(store, run_id)
    assert answers["Q2"].verdict == UNCLEAR and "at least 2" in answers["Q2"].because
    assert answers["Q3"].verdict == UNCLEAR and "at least 2" in answers["Q3"].because


@pytest.mark.parametrize("step, verdict", [(0.3, YES), (-0.3, NO), (0.0, UNCLEAR)])
def test_q3_does_the_trait_keep_moving_and_how_much_of_the_steering_stays(tmp_path, step, verdict):
    store, run_id = _store(tmp_path)
    _axis(store, run_id, -1, "base", _spread(0.0))
    for r in range(3):
        healed = [x + step * r + (0.2 if (k + r) % 2 else -0.2) * (step == 0) for k, x in enumerate(_spread(0.1))]
        _axis(store, run_id, r, "healed", healed)
        _axis(store, run_id, r, "steered", [x + 0.5 for x in _spread(0.0)])
    answer = _answers(store, run_id)["Q3"]
    assert answer.verdict == verdict, answer.because
    kept = answer.figures["share_of_steered_shift_kept"][0]
    assert kept["value"] == pytest.approx(0.2)  # healed 0.1 above base, steered 0.5 above base


@pytest.mark.parametrize("healed, prompted, verdict", [(0.5, 0.0, YES), (0.0, 0.5, NO), (0.25, 0.25, UNCLEAR)])
def test_does_it_beat_prompting(tmp_path, healed, prompted, verdict):
    store, run_id = _store(tmp_path)
    _axis(store, run_id, -1, "prompted", _spread(prompted, 0.3))
    _axis(store, run_id, 0, "healed", _spread(healed, 0.3)[::-1] if healed == prompted else _spread(healed, 0.3))
    assert _answers(store, run_id)["prompting"].verdict == verdict


@pytest.mark.parametrize("steered, random, verdict", [(0.5, 0.0, YES), (0.0, 0.5, NO), (None, None, UNCLEAR)])
def test_does_it_beat_a_random_vector(tmp_path, steered, random, verdict):
    store, run_id = _store(tmp_path)
    if steered is not None:
        _axis(store, run_id, 0, "steered", _spread(steered))
        _axis(store, run_id, 0, "random", _spread(random))
    answer = _answers(store, run_id)["random"]
    assert answer.verdict == verdict
    if steered is None:
        assert "--random-control" in answer.because


def test_a_stopped_early_run_says_so_and_every_answer_states_its_rule(tmp_path):
    store, run_id = _store(tmp_path)
    store.set_run(run_id, status="completed", stop_reason="stopped early after round 0 of 3: healed incoherence")
    summary = run_summary(store, run_id)
    assert summary["status"] == "completed (stopped early)" and "round 0 of 3" in summary["stop_reason"]
    assert [q["rule"] for q in summary["questions"]] == [RULES[k] for k in
                                                          ("Q0", "Q1", "Q2", "Q3", "prompting", "random")]
