"""The dose on the bundled model: backtrack-and-replay decoding, the dose curve, calibration, and
the `steerheal dose` command (issue 18)."""

import json

import pytest

from steerheal.backtrack import BacktrackConfig
from steerheal.config import GenerationConfig, SteerConfig
from steerheal.dose import DoseConfig, DoseMeter, DoseTarget, calibrate, dose_curve
from steerheal.evals.axis import bundled_items, select
from steerheal.generate import generate, stream
from steerheal.presets import generation_prompts
from tests.conftest import run_cli

pytestmark = pytest.mark.integration
PROMPTS = generation_prompts()[:4]


def test_backtracking_that_replays_nothing_is_token_for_token_plain_generation(lm, care_vector):
    """No replay (alpha 0, or a threshold never reached): the tokens are model.generate's, sampled
    with the same seed, and every token's KL is measured (0 at alpha 0)."""
    gen = GenerationConfig(max_new_tokens=12, seed=5)
    for alpha, threshold in ((0.0, 0.01), (3.0, 1e6)):
        plain = generate(lm, PROMPTS, gen, care_vector, SteerConfig(alpha=alpha))
        watched = generate(lm, PROMPTS, gen, care_vector, SteerConfig(alpha=alpha),
                           backtrack=BacktrackConfig(threshold=threshold, window=4))
        assert [c.token_ids for c in watched] == [c.token_ids for c in plain]
        assert all(not c.backtracks and len(c.token_kl) == c.n_tokens for c in watched)
        if alpha == 0:
            assert max(max(c.token_kl) for c in watched) < 1e-4
    # Without the option, generation is today's generate (the same call path, no KL watched).
    assert all(c.token_kl is None for c in generate(lm, PROMPTS[:1], gen, care_vector, SteerConfig(alpha=3.0)))


def test_windows_over_the_threshold_are_replayed_at_a_lower_strength_and_kl_falls(lm, care_vector):
    gen = GenerationConfig(max_new_tokens=16, min_new_tokens=16, seed=5)
    watch_only = BacktrackConfig(threshold=1.0, window=4, max_backtracks=0)
    replay = BacktrackConfig(threshold=1.0, window=4, scale=0.5, max_backtracks=2)
    plain = generate(lm, PROMPTS, gen, care_vector, SteerConfig(alpha=8.0), backtrack=watch_only)
    replayed = generate(lm, PROMPTS, gen, care_vector, SteerConfig(alpha=8.0), backtrack=replay)
    records = [b for c in replayed for b in c.backtracks]
    assert records, "alpha 8 should push some window past 1 nat"
    for c in replayed:
        assert len(c.backtracks) <= 2 and c.n_tokens == 16 and len(c.token_kl) == 16
        for k, b in enumerate(c.backtracks, start=1):
            assert b.window_kl > 1.0 and b.alpha == pytest.approx(8.0 * 0.5 ** k) and b.position % 4 == 0
    mean = lambda cs: sum(sum(c.token_kl) for c in cs) / sum(c.n_tokens for c in cs)  # noqa: E731
    assert mean(replayed) < mean(plain)
    # The streaming variant ends on the same text as the batch, and shrinks while a window replays.
    one = next(c for c in replayed if c.backtracks)
    texts = list(stream(lm, one.prompt, gen, care_vector, SteerConfig(alpha=8.0), backtrack=replay))
    assert texts[-1] == generate(lm, [one.prompt], gen, care_vector, SteerConfig(alpha=8.0), backtrack=replay)[0].text
    assert any(len(b) < len(a) for a, b in zip(texts, texts[1:]))


def test_the_dose_curve_shows_kl_and_incoherence_rising_and_the_kept_share_falling(lm, care_vector):
    items = select(bundled_items("care-over-authority"), "dev")
    meter = DoseMeter(lm, care_vector, generation_prompts(), DoseConfig(n_prompts=4, max_new_tokens=8, axis_items=4,
                                                                        drift_prompts=2, drift_tokens=8), items=items)
    seen = []
    points = dose_curve(meter, [16.0, 0.0, 4.0], on_point=lambda pts: seen.append(len(pts)))
    assert seen == [1, 2, 3] and [p.alpha for p in points] == [0.0, 4.0, 16.0]
    zero, mid, high = points
    assert zero.kl_p95 == pytest.approx(0.0, abs=1e-4) and zero.incoherence["value"] == pytest.approx(0.0, abs=1e-3)
    assert zero.kl_p95 < mid.kl_p95 < high.kl_p95 and zero.kl_mean < mid.kl_mean < high.kl_mean
    assert mid.incoherence["value"] < high.incoherence["value"]
    assert high.kept_share < zero.kept_share
    assert all(p.axis["n"] == 4 and p.n_completions == 4 for p in points)
    # Later alphas reuse the unsteered pass over the prompts: a fresh meter measures the same.
    fresh = DoseMeter(lm, care_vector, generation_prompts(), meter.cfg, items=items).point(16.0)
    assert (fresh.kl_p95, fresh.kept_share, fresh.incoherence) == (high.kl_p95, high.kept_share, high.incoherence)


def test_calibration_reaches_a_kl_budget_within_tolerance_in_at_most_eight_evaluations(lm, care_vector):
    meter = DoseMeter(lm, care_vector, generation_prompts(), DoseConfig(n_prompts=4, max_new_tokens=16,
                                                                        axis_items=0, drift_prompts=0))
    found = calibrate(meter, DoseTarget(kind="kl", value=1.0))
    assert found.reached and found.evaluations <= 8
    assert abs(found.measure - 1.0) <= 0.1 and found.alpha > 0
    assert meter.point(found.alpha, full=False).kl_p95 == found.measure  # the measure at the alpha it returns


def test_dose_command_prints_the_curve_and_the_alpha_found_and_refuses_what_it_cannot_do(care_vector, tmp_path):
    vector = tmp_path / "care.safetensors"
    care_vector.save(vector)
    small = ["--vector", vector, "--prompts", "3", "--tokens", "8", "--axis-items", "0", "--drift-prompts", "0"]
    out = run_cli("dose", *small, "--alphas", "0,2,8", "--target-kl", "1.0", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert [p["alpha"] for p in result["points"] if p["grid"]] == [0.0, 2.0, 8.0]
    assert result["reached"] and abs(result["measure"] - 1.0) <= 0.1 and 0 < result["alpha"] < 8
    assert result["evaluations"] <= 8

    # A target the grid cannot reach: the closest alpha and its measure, exit 2.
    out = run_cli("dose", *small, "--alphas", "0,0.5", "--target-kl", "5")
    assert out.returncode == 2 and "never reaches" in out.stderr and "closest is alpha 0.5" in out.stderr
    # A non-finite or negative budget, two targets, a missing vector: one line, exit 2, before any work.
    for bad, says in ((["--target-kl", "nan"], "not a finite number"), (["--target-kl", "-1"], "above 0 nats"),
                      (["--target-kept", "1.5"], "between 0 and 1"),
                      (["--target-kl", "1", "--target-kept", "0.5"], "one target"),
                      (["--alphas", "1,x"], "numbers separated by commas")):
        out = run_cli("dose", *small, *bad)
        assert out.returncode == 2 and says in out.stderr, (bad, out.stderr)
        assert "Traceback" not in out.stderr


def test_a_run_with_auto_alphas_calibrates_each_round_and_a_kill_mid_calibration_redoes_only_it(tmp_path):
    """alphas = "auto": the round's strengths are the calibrated alpha times auto_spread, stored; a run
    killed (SIGKILL) during calibration resumes with the base stage and the vector as they were and
    calibrates once. The completions are decoded with backtracking and keep their replay records."""
    import os
    import signal
    import subprocess
    import sys

    from steerheal.faults import CRASH_ENV
    from steerheal.loop import run_loop
    from steerheal.store import Store
    from tests.conftest import KEEP_ALL_FILTERS_TOML, TINY_INSTRUMENTS_TOML, TINYMFV_DATA

    db = tmp_path / "runs.db"
    (tmp_path / "run.toml").write_text('alphas = "auto"\ntarget_kl = 1.0\ndose_prompts = 2\ntinymfv = "off"\n'
                                       "rounds = 1\nn_completions = 4\nmax_new_tokens = 8\nn_contexts = 2\n"
                                       "probe_tokens = 2\n" + TINY_INSTRUMENTS_TOML + "[heal]\nepochs = 1\n"
                                       "[backtrack]\nthreshold = 1.0\nwindow = 4\n" + KEEP_ALL_FILTERS_TOML)
    args = ["run", "--db", str(db), "--config", str(tmp_path / "run.toml")] + (["--data", TINYMFV_DATA] if TINYMFV_DATA
                                                                               else [])
    killed = subprocess.run([sys.executable, "-m", "steerheal.cli", *args], capture_output=True, text=True,
                            timeout=600, env={**os.environ, CRASH_ENV: "round0:calibrating"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-1500:]  # after the first dose evaluation
    store = Store(db)
    run_id = store.runs()[0]["id"]
    assert not store.rows("calibrations", run_id)
    before = {t: sorted(r["id"] for r in store.rows(t, run_id, -1)) for t in ("axis_evals", "drift_evals", "probes")}
    vector_sha = store.rows("artifacts", run_id, 0, kind="vector.safetensors")[0]["sha256"]

    store.set_run(run_id, status="running", error=None)
    assert run_loop(store, run_id)["status"] == "completed"
    assert {t: sorted(r["id"] for r in store.rows(t, run_id, -1)) for t in before} == before
    assert store.rows("artifacts", run_id, 0, kind="vector.safetensors")[0]["sha256"] == vector_sha
    [cal] = store.rows("calibrations", run_id)
    alphas = json.loads(cal["alphas"])
    assert cal["kind"] == "kl" and cal["target"] == 1.0 and 1 <= cal["evaluations"] <= 8 and cal["alpha"] > 0
    assert alphas == [round(cal["alpha"] * k, 4) for k in (0.75, 1.0, 1.25)]
    completions = store.rows("completions", run_id, 0)
    assert sorted({c["alpha"] for c in completions}) == alphas
    from steerheal.summary import run_summary

    assert run_summary(store, run_id)["calibrations"][0]["alphas"] == alphas  # runs --json and summary say it
    assert all(isinstance(json.loads(c["scores"])["backtracks"], list) for c in completions)
