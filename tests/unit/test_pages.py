"""Pure helpers behind the pages: verdicts under new thresholds, weak-pair warnings, diffs."""

import json

import pytest

from pages.curate import table, verdict_under
from pages.heal_form import MIN_COMPLETIONS, completions_problem, run_config_from_form
from pages.heal_status import stage_parts, start_note_md
from pages.personas import norm_warnings, pair_warnings
from pages.results import highlight_changes
from pages.steer import kl_html
from steerheal.errors import SteerhealError
from steerheal.filters import FilterConfig
from steerheal.presets import default_contexts, persona_presets


def _row(cid, ppl, rep, rmse, human=None, narration=True):
    checks = [dict(name="tail_perplexity", score=ppl, threshold=50, passed=ppl < 50, reason=""),
              dict(name="repetition", score=rep, threshold=0.3, passed=rep < 0.3, reason=""),
              dict(name="narration", score=0.0 if narration else 1.0, threshold=0, passed=narration,
                   reason="" if narration else "narrates the trait: “I am someone who”")]
    return dict(id=cid, alpha=2.0, prompt="p", text="t", human_verdict=human,
                scores=json.dumps({"checks": checks, "kl": {"rmse": rmse}}))


def test_moving_a_threshold_changes_the_automatic_verdict_not_the_human_one():
    rows = [_row(1, 10, 0.1, 0.5), _row(2, 80, 0.1, 0.5), _row(3, 10, 0.1, 3.0, human=1), _row(4, 5, 0.1, 0.2,
                                                                                                 narration=False)]
    frame, autos, summary = table(rows, FilterConfig())
    assert autos == {1: True, 2: False, 3: True, 4: False}
    assert "**2 kept**" in summary and "tail perplexity 1" in summary and "narration 1" in summary
    _, autos, summary = table(rows, FilterConfig(max_tail_perplexity=100, max_kl_rmse=1.0, reject_narration=False))
    assert autos == {1: True, 2: True, 3: False, 4: True}
    assert list(frame["kept"]) == ["✓", "✗", "✓", "✗"]
    assert "**4 kept**" in summary  # row 3: the filter now drops it, the person's approval still keeps it
    ok, failed = verdict_under({}, {}, FilterConfig())
    assert ok and failed == []


def test_weak_pairs_and_weak_vectors_are_flagged():
    assert any("very short" in w for w in pair_warnings("kind", "someone who defers to authority always", ["a"] * 80))
    assert any("the same text" in w for w in pair_warnings("someone who loves rules a lot", "someone who loves rules a lot!",
                                                          ["a"] * 80))
    assert any("noisy" in w for w in pair_warnings("someone who cares for people", "someone who obeys orders", ["a"]))
    assert pair_warnings("someone who cares for people", "someone who obeys orders", ["a"] * 80) == []
    assert norm_warnings({"norms": [0.01, 0.02], "residual_norms": [10.0, 10.0]})
    assert not norm_warnings({"norms": [0.5, 2.0], "residual_norms": [10.0, 10.0]})


def test_probe_diff_marks_only_new_words_and_kl_shading_escapes_text():
    assert highlight_changes("I love people", "I love people deeply") == "I love people <mark>deeply</mark>"
    shaded = kl_html([("<b>", 0.0), (" hi", 5.0)], 3.0)
    assert "&lt;b&gt;" in shaded and "rgba(220,38,38,1.00)" in shaded and "data-alpha='3'" in shaded


def _form(**over):
    """The Heal form's values in build()'s order, with tiny valid settings."""
    pair = next(iter(persona_presets().values()))
    values = dict(rounds=1, alphas="2, 4", n=6, tokens=16, curation="auto", agg="rmse", tau=1.0, lam=0.3, power=0.0,
                  ref="base", rank=4, lr=1e-4, epochs=1, limit=3, think=1, probe=12, seed=0, random=False,
                  pos=pair["pos"], neg=pair["neg"], contexts="\n".join(default_contexts()), layers="0.45-0.55")
    named = {f"{k}_v": over.pop(k) for k in list(over) if k not in values}  # later fields, by keyword
    values.update(over)
    return run_config_from_form("bundled", *values.values(), **named)


def test_the_heal_form_refuses_settings_that_cannot_heal_and_says_what_to_change():
    assert MIN_COMPLETIONS == 4
    assert completions_problem(4) is None and completions_problem(100) is None
    problem = completions_problem(3)
    assert "at least 4, got 3" in problem and "more is safer" in problem
    assert _form().n_completions == 6 and _form(n=4).n_completions == 4
    with pytest.raises(SteerhealError, match="Completions per round must be at least 4, got 3"):
        _form(n=3)
    with pytest.raises(SteerhealError, match="Rounds must be at least 1, got 0"):
        _form(rounds=0)
    with pytest.raises(SteerhealError, match="strength"):
        _form(alphas="abc")


def test_heal_stages_read_as_words_and_the_start_line_follows_the_run():
    assert stage_parts("round 0: vector") == ("round 0: extracting the steering vector", None, None)
    assert stage_parts("round 1: heal step 3/6") == ("round 1: training the LoRA, step 3/6", 3, 6)
    assert stage_parts("round 0: eval healed 2/10") == ("round 0: evaluating the healed model 2/10", 2, 10)
    assert stage_parts("something new") == ("something new", None, None)
    run = dict(id=3, status="running", stage="round 0: vector")
    assert "queued (job 8)" in start_note_md(run, dict(id=8, status="queued"))
    running = start_note_md(run, dict(id=8, status="running"))
    assert "running" in running and "extracting the steering vector" in running and "queued" not in running
    done = start_note_md(dict(run, status="completed", stage="done"), dict(id=8, status="completed"))
    assert "completed" in done and "queued" not in done
    assert "Resume" in start_note_md(dict(run, status="interrupted"), dict(id=8, status="cancelled"))
    assert "Resume" in start_note_md(dict(run, status="cancelled"), dict(id=8, status="cancelled"))


def test_a_running_stage_without_a_count_gets_a_moving_bar():
    from pages.common import job_status_md

    job = dict(id=8, status="running", progress=dict(stage="extracting the steering vector", round=0))
    assert "sh-busy" in job_status_md(job, "loop job", busy_bar=True)
    assert "sh-busy" not in job_status_md(job, "loop job")
    counted = dict(job, progress=dict(stage="x", done=2, total=4))
    assert "2/4" in job_status_md(counted, busy_bar=True) and "sh-busy" not in job_status_md(counted, busy_bar=True)


def test_the_pair_and_vector_in_use_are_named_preset_or_custom(tmp_path):
    """Issue 16: a refresh reads the pair and vector back from the store; Steer and Heal name them."""
    import time

    from pages.common import clock, lab_vector_job, pair_label, preset_for, vector_summary
    from pages.heal_form import run_uses_html
    from pages.personas import CUSTOM_INFO, preset_info
    from pages.steer import vector_html
    from steerheal.store import Store

    presets = persona_presets()
    care = presets["care-over-authority"]
    pos, neg = "someone who <always> helps strangers in need", "someone who never helps strangers in need at all"
    assert preset_for(care["pos"], care["neg"], presets) == "care-over-authority"
    assert preset_for(pos, neg, presets) is None and preset_for(care["pos"], neg, presets) is None
    assert preset_info(None, presets) == CUSTOM_INFO and "Care over authority" not in CUSTOM_INFO
    assert pair_label(care["pos"], care["neg"], presets) == "preset 'care-over-authority'"
    assert pair_label(pos, neg, presets).startswith("custom pair 'someone who <always> helps")
    assert "…" in pair_label("x" * 200, neg, presets)

    noon = time.mktime((2026, 11, 30, 11, 32, 0, 0, 0, -1))
    assert clock(noon, noon + 60) == "11:32" and clock(noon, noon + 3 * 86400) == "2026-11-30 11:32"
    job = dict(id=5, status="completed", finished=noon, params=dict(pos=pos, neg=neg, contexts=["a", "b"]),
               result=dict(path="v.safetensors", n_layers=30))
    line = vector_summary(job, presets, noon)
    assert line.startswith("custom pair 'someone who") and "2 contexts, 30 layers, extracted 11:32 (job 5)" in line
    assert vector_summary(None, presets).startswith("No vector yet")
    shown = vector_html(job, presets, noon)
    assert "&lt;always&gt;" in shown and "<always>" not in shown  # the personas are text, never markup

    uses = run_uses_html(pos, neg, "a\nb", "0.45-0.55", job, presets)
    assert "This run will use:" in uses and "custom pair" in uses and "2 contexts" in uses and "0.45-0.55" in uses
    assert "previews the same pair and contexts (job 5, extracted" in uses
    assert "previews a different vector (custom pair" in run_uses_html(pos, neg, "a", "0.45-0.55", job, presets)
    other = run_uses_html(care["pos"], care["neg"], "\n".join(default_contexts()), "0.45-0.55", job, presets)
    assert "preset 'care-over-authority'" in other and "the 80 default contexts" in other and "different" in other

    store = Store(tmp_path / "runs.db")  # the newest completed vector job is the one in use
    assert lab_vector_job(store) is None
    done = store.submit_job("vector", dict(pos=pos, neg=neg, contexts=["a", "b"]))
    store.update_job(done, status="completed", result=dict(path="v", n_layers=30), finished=noon)
    failed = store.submit_job("vector", dict(pos=care["pos"], neg=care["neg"], contexts=["a"]))
    store.update_job(failed, status="failed", error="boom")
    assert lab_vector_job(store)["id"] == done


def test_small_cosmetics_a_user_noticed(tmp_path):
    """Issue 16, item 12: "Only 1 contexts", "1 rounds"; a one-step training curve labelled 1.000000."""
    from pages.heal_status import loss_chart

    assert any("Only 1 context:" in w for w in pair_warnings("someone who cares a lot", "someone who obeys", ["hi"]))
    assert any("Only 3 contexts:" in w for w in pair_warnings("someone who cares a lot", "someone who obeys",
                                                               ["a", "b", "c"]))
    spec = loss_chart([dict(round=0, step=1, loss=1.0, nll=0.9, divergence=0.1)], tau=1.0).to_dict()
    x_axis = spec["layer"][0]["encoding"]["x"]["axis"]
    assert x_axis["format"] == "d" and x_axis["tickMinStep"] == 1
    from pages.common import run_choices
    from steerheal.store import Store

    store = Store(tmp_path / "runs.db")
    store.create_run({"rounds": 1, "pair": "care-over-authority"}, "bundled", 0)
    store.create_run({"rounds": 3, "pair": "care-over-authority"}, "bundled", 0)
    assert [label for label, _ in run_choices(store)] == [
        "run 2 · running · 3 rounds · care-over-authority", "run 1 · running · 1 round · care-over-authority"]


EVALS_TWO_RUNS = [dict(run_id=r, round=k, stage=s, auth_nats=-2.0 - k - r, care_nats=-1.0 + k, coherence=0.95)
                  for r in (1, 2) for k, s in ((-1, "base"), (0, "steered"), (0, "healed"))]


def test_two_runs_on_results_can_be_told_apart():
    """Issue 16, item 7: every chart legend tells the runs apart (shape or colour by run, not two
    identical black dots); every probe column names its run; Export names the run it exports."""
    from pages.results import export_round_label, probe_html
    from steerheal.charts import incoherence_per_round, metric_per_round, trajectory

    for chart in (metric_per_round(EVALS_TWO_RUNS, "auth_nats"), incoherence_per_round(EVALS_TWO_RUNS),
                  trajectory(EVALS_TWO_RUNS)):
        spec = chart.to_dict()
        layers = spec.get("layer", [spec])
        by_run = [ch for layer in layers for name, ch in layer.get("encoding", {}).items()
                  if name in ("color", "shape") and ch.get("field") == "run" and ch.get("legend", {}) is not None]
        assert by_run, f"no colour or shape by run in {spec.get('title')}"
        # a dash legend alone draws every run as the same black dot: it must not be the run's legend
        dashes = [layer["encoding"]["strokeDash"] for layer in layers if "strokeDash" in layer.get("encoding", {})]
        assert all(d.get("legend", {}) is None for d in dashes)

    probes = [dict(run_id=r, round=k, prompt="A friend asks you to lie", answer=f"answer {r}.{k}")
              for r in (3, 5) for k in (-1, 0)]
    shown = probe_html(probes)
    for label in ("run 3 · base", "run 3 · round 0", "run 5 · base", "run 5 · round 0"):
        assert label in shown
    assert shown.count("A friend asks you to lie") == 1  # one table per prompt, a row per run
    assert "answer 5.-1" in shown and "<mark>5.0</mark>" in shown  # diffs within a run
    assert export_round_label([4]) == "Round of run 4"
    assert "pick" in export_round_label([]).lower()


def test_run_pickers_name_a_custom_pair_and_a_run_cancelled_before_it_started(tmp_path):
    """Issue 16: a custom-pair run is not listed as 'care-over-authority (custom)'."""
    from pages.common import run_choices
    from steerheal.store import Store

    store = Store(tmp_path / "runs.db")
    store.create_run({"rounds": 2, "pair": "care-over-authority", "pos": "someone who always stops to help a "
                      "stranger in trouble", "neg": "someone who walks past"}, "bundled", 0)
    (label, _), = run_choices(store)
    assert label == "run 1 · running · 2 rounds · custom pair 'someone who always stops to…'"
    assert "care-over-authority" not in label


def test_a_picked_run_shows_its_own_loop_settings_and_a_never_started_run_says_so():
    """Issue 16, item 6: picking an old run on Heal fills the Loop settings with that run's values."""
    from pages.heal_form import loop_settings
    from pages.heal_status import run_stage_text

    cfg = _form(rounds=2, alphas="2, 5.5", n=8, tokens=24, curation="manual", tau=0.7, rank=8, epochs=3, limit=5,
                think=3, probe=20, seed=7, random=True).to_dict()
    shown = loop_settings(cfg)
    assert shown == dict(rounds=2, alphas="2, 5.5", n_completions=8, max_new_tokens=24, curation="manual",
                         agg="rmse", tau=0.7, lam=0.3, lam_power=0.0, ref="base", random_control=True, rank=8,
                         lr=1e-4, epochs=3, eval_limit=5, think_tokens=3, probe_tokens=20, seed=7,
                         tinymfv="subset", axis_limit=0, drift_prompts=32, drift_tokens=32, incoherence_ceiling=2.0,
                         target_kind="KL budget", target_value=1.0, backtrack=False, backtrack_kl=1.0,
                         backtrack_window=8)
    assert loop_settings({"tinymfv": "on"})["tinymfv"] == "full"  # "on" in runs from before tinymfv modes
    # Issue 18: a calibrated run shows "auto" and its target; a backtracking run its replay settings.
    dosed = loop_settings(_form(alphas="auto", target_kind="kept share", target_value=0.6, backtrack=True,
                                backtrack_kl=2.0, backtrack_window=6).to_dict())
    assert (dosed["alphas"], dosed["target_kind"], dosed["target_value"]) == ("auto", "kept share", 0.6)
    assert (dosed["backtrack"], dosed["backtrack_kl"], dosed["backtrack_window"]) == (True, 2.0, 6)
    assert loop_settings({"rounds": 1})["alphas"] == "2, 3, 4"  # an old config lacking a key: the default
    assert run_stage_text(dict(status="cancelled", stage="created")) == "cancelled before it started"
    assert run_stage_text(dict(status="running", stage="created")) == "starting"
    assert run_stage_text(dict(status="cancelled", stage="round 0: heal step 2/6")).startswith("round 0: training")


def test_the_heal_page_says_which_tinymfv_data_a_run_will_use(tmp_path):
    """Issue 16, item 4: before a run, the real data folder or the demo set (not comparable) and how to
    point the app at the real data."""
    from pages.heal_form import tinymfv_data_html

    line = tinymfv_data_html({"STEERHEAL_TINYMFV_DIR": "/work/shared/tinymfv"}) if \
        __import__("pathlib").Path("/work/shared/tinymfv/vignettes_classic_other_violate.jsonl").is_file() else None
    if line is not None:
        assert "132 vignettes from" in line and "comparable with published" in line
    offline = tinymfv_data_html({"HF_HUB_OFFLINE": "1"})
    assert "28 demo vignettes" in offline and "not comparable" in offline
    assert "STEERHEAL_TINYMFV_DIR" in offline and "data_dir" in offline
    online = tinymfv_data_html({})
    assert "wassname/tiny-mfv" in online and "28 demo vignettes" in online
    broken = tinymfv_data_html({"STEERHEAL_TINYMFV_DIR": str(tmp_path / "nowhere")})
    assert "sh-error" in broken and "nowhere" in broken and "will fail" in broken


def test_warnings_before_extract_and_fonts_that_render_whole_words():
    """Issue 16, items 8 and 12: an empty or identical persona warns inline before Extract; bold text
    never asks for the bundled SemiBold files that hold only a few glyphs (the small leading "A")."""
    from pages.common import FONTS, theme

    assert any("positive persona is empty" in w for w in pair_warnings("", "someone who obeys orders", ["a"] * 8))
    assert any("identical" in w for w in pair_warnings("someone who obeys orders", "Someone who obeys orders ",
                                                       ["a"] * 8))
    assert any("context pool is empty" in w for w in pair_warnings("someone who cares", "someone who obeys", []))
    css = "".join(f.stylesheet()["css"] for f in FONTS)
    assert theme().font.startswith("'Source Sans Pro'") and theme().font_mono.startswith("'IBM Plex Mono'")
    assert "SemiBold" not in css and "font-weight: 600" not in css and "Bold.woff2" in css


def test_a_refused_button_says_why_beside_it_instead_of_raising():
    """Issue 16, item 8: a refusal leaves the outputs as they are and puts the reason in an error
    slot; it never raises (a raised error leaves bare red "Error" badges on the outputs)."""
    import gradio as gr

    from pages.common import beside

    def refuse(_):
        raise SteerhealError("Select rows first: click them in the table.")

    out = beside(refuse, 2, "Not saved")(1)
    assert len(out) == 3 and all(isinstance(o, type(gr.skip())) for o in out[:2])
    assert "Not saved: Select rows first" in out[2] and "sh-error" in out[2]
    assert beside(lambda x: (x, x + 1), 2)(1) == (1, 2, "")
