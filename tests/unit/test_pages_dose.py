"""The Steer page's dose pieces without a browser: the dose form's checks, the calibrated-alpha
line, the dose chart on a partial curve, and the outline of replayed spans."""

import pytest

from pages.dose import dose_params, found_html
from pages.steer import replayed_html
from steerheal.backtrack import Backtrack
from steerheal.dose_charts import dose_chart
from steerheal.errors import SteerhealError
from steerheal.presets import persona_presets

CARE = persona_presets()["care-over-authority"]


def _params(**over):
    values = dict(vector_path="/tmp/v.safetensors", alphas_text="0, 2, 4", target_label="none", target_value=1.0,
                  n_prompts=16, n_tokens=32, axis_items=16, drift_prompts=8, band="0.45-0.55", pos=CARE["pos"],
                  neg=CARE["neg"], items_path=None)
    values.update(over)
    return dose_params(*values.values(), model="bundled", load_in_4bit=False)


def test_the_dose_form_builds_a_job_for_the_pair_in_use_and_refuses_bad_input():
    p = _params(target_label="KL budget (p95 per-token KL, nats)", target_value=1.5)
    assert p["pair"] == "care-over-authority" and p["alphas"] == [0.0, 2.0, 4.0]
    assert p["target"] == dict(kind="kl", value=1.5, sign=1)
    assert _params(pos="someone who hums", neg="someone who whistles")["pair"] is None  # a custom pair
    for over, says in ((dict(vector_path=None), "Personas page"), (dict(alphas_text="1, x"), "strength"),
                       (dict(target_label="kept share", target_value=1.5), "between 0 and 1"),
                       (dict(target_label="KL budget (p95 per-token KL, nats)", target_value=-1), "above 0 nats"),
                       (dict(n_prompts=0), "Prompts"), (dict(drift_prompts=1), "0 \\(off\\) or at least 2")):
        with pytest.raises((SteerhealError, Exception), match=says):
            _params(**over)


def test_the_calibrated_alpha_is_said_with_its_measure_and_evaluations():
    job = dict(status="completed", result=dict(alpha=2.345, measure=0.98, evaluations=3, reached=True,
                                               target=dict(kind="kl", value=1.0, sign=1), points=[]))
    line = found_html(job)
    assert "α = 2.345" in line and "p95 per-token KL 0.98" in line and "3 evaluations" in line and "reached" in line
    assert found_html(dict(status="running", result=None)) == ""


def test_the_dose_chart_draws_a_partial_curve_and_marks_the_chosen_alpha():
    assert dose_chart([]) is None
    one = dict(alpha=0.0, kl_p95=0.0, kl_mean=0.0, kept_share=1.0, axis=None, incoherence=None, grid=True)
    spec = dose_chart([one]).to_dict()
    assert len(spec["vconcat"]) == 2
    spec = dose_chart([one, {**one, "alpha": 2.0, "kl_p95": 1.1, "grid": False}], 2.0,
                      dict(kind="kl", value=1.0)).to_dict()
    text = str(spec)
    assert "chosen α" in text and "'target'" in text and "diamond" in text


def test_replayed_spans_are_outlined_and_each_replay_is_listed():
    pieces = ["Be", " kind", " to", " all", " of", " them"]
    kl = [0.1, 0.2, 0.1, 0.3, 2.5, 0.1]
    b = Backtrack(position=2, rolled_back=3, window_kl=1.7, alpha=2.0)
    out = replayed_html(pieces, kl, [b], alpha=4.0, window=2)
    assert out.count("class='sh-replayed'") == 2 and "data-replays='1'" in out
    assert "tokens 2–3: window KL 1.70 nats, 3 tokens undone, replayed at α 2" in out
    assert "nothing was replayed" in replayed_html(pieces, kl, [], alpha=4.0, window=2)


def test_results_say_which_strengths_each_round_calibrated():
    from pages.science import calibration_note

    assert calibration_note([]) == ""
    note = calibration_note([dict(round=0, kind="kl", target=1.0, alpha=1.7234, measure=0.93, evaluations=3,
                                  reached=True, alphas=[1.2925, 1.7234, 2.1542]),
                             dict(round=1, kind="kl", target=1.0, alpha=2.0, measure=1.3, evaluations=8,
                                  reached=False, alphas=[1.5, 2.0, 2.5])])
    assert "data-calibrations='2'" in note and "round 0: α 1.72 (p95 per-token KL 0.93, target 1, 3 evaluations)" in note
    assert "round 1: α 2 (p95 per-token KL 1.3, target 1, 8 evaluations, not reached) → strengths 1.5, 2, 2.5" in note
