"""Dose settings and the calibration's search, without a model: targets, backtracking options, run
configs with alphas = "auto", and the bracketing + interpolation on measured curves written here."""

import math

import pytest

from steerheal.backtrack import BacktrackConfig
from steerheal.dose import DoseConfig, DosePoint, DoseTarget, calibrate, check_grid
from steerheal.errors import SteerhealError
from steerheal.loop import RunConfig


class CurveMeter:
    """Stands in for DoseMeter: the measure at alpha is a curve given here (the KL of a vector
    grows like a power of alpha; the kept share falls off a cliff)."""

    def __init__(self, kl=lambda a: 0.05 * abs(a) ** 1.7, kept=lambda a: 1 / (1 + math.exp(abs(a) - 6))):
        self.kl, self.kept = kl, kept
        self._points: dict[float, DosePoint] = {}
        self.should_stop = None

    @property
    def evaluations(self):
        return len(self._points)

    def point(self, alpha, full=True, grid=True):
        alpha = float(alpha)
        if alpha not in self._points:
            self._points[alpha] = DosePoint(alpha=alpha, kl_mean=0.0, kl_p95=self.kl(alpha), kl_share_over_1=0.0,
                                            kept_share=self.kept(alpha), n_completions=16, n_tokens=512, grid=grid)
        return self._points[alpha]

    def points(self):
        return sorted(self._points.values(), key=lambda p: p.alpha)


@pytest.mark.parametrize("kind,value", [("kl", 1.0), ("kl", 0.3), ("kl", 4.0), ("kept", 0.5), ("kept", 0.8)])
def test_calibration_reaches_the_target_within_tolerance_in_at_most_eight_evaluations(kind, value):
    target = DoseTarget(kind=kind, value=value)
    found = calibrate(CurveMeter(), target)
    assert found.reached and found.evaluations <= 8, found
    assert abs(found.measure - value) <= target.tolerance_abs()
    assert found.alpha > 0


def test_a_negative_sign_calibrates_on_the_negative_side():
    found = calibrate(CurveMeter(), DoseTarget(kind="kl", value=1.0, sign=-1))
    assert found.reached and found.alpha < 0


def test_with_a_grid_the_bracket_comes_from_the_grid_and_an_unreachable_target_names_the_closest_alpha():
    meter = CurveMeter()
    found = calibrate(meter, DoseTarget(kind="kl", value=1.0), grid=[-2, 0, 1, 2, 4, 8])
    assert found.reached and 2 < found.alpha < 8 and meter.point(2).kl_p95 < 1.0 < meter.point(8).kl_p95
    with pytest.raises(SteerhealError, match=r"never reaches .* closest is alpha 2 with"):
        calibrate(CurveMeter(), DoseTarget(kind="kl", value=5.0), grid=[0, 1, 2])
    with pytest.raises(SteerhealError, match="no alphas of sign"):
        calibrate(CurveMeter(), DoseTarget(kind="kl", value=1.0), grid=[-2, -1, 0])


def test_without_a_grid_an_unreachable_target_says_how_far_it_looked():
    with pytest.raises(SteerhealError, match=r"No alpha up to .* reaches .* closest is alpha"):
        calibrate(CurveMeter(kl=lambda a: min(0.5, 0.01 * abs(a))), DoseTarget(kind="kl", value=1.0))


@pytest.mark.parametrize("target,says", [
    (dict(kind="kl", value=float("nan")), "finite"), (dict(kind="kl", value=-1.0), "above 0 nats"),
    (dict(kind="kl", value=0.0), "above 0 nats"), (dict(kind="kept", value=1.0), "between 0 and 1"),
    (dict(kind="ppl", value=1.0), "Unknown dose target"), (dict(kind="kl", value=1.0, sign=0), "sign"),
    (dict(kind="kl", value=1.0, max_evaluations=1), "max_evaluations")])
def test_bad_targets_say_what_to_change(target, says):
    with pytest.raises(SteerhealError, match=says):
        DoseTarget(**target).validate()


def test_backtracking_options_are_checked_and_a_window_longer_than_the_generation_is_refused():
    BacktrackConfig().validate(64)
    for bad, says in ((dict(threshold=0), "above 0"), (dict(threshold=float("inf")), "finite"),
                      (dict(window=0), "positive"), (dict(scale=1.0), r"\[0, 1\)"), (dict(max_backtracks=-1), "non-neg")):
        with pytest.raises(SteerhealError, match=says):
            BacktrackConfig(**bad).validate(64)
    with pytest.raises(SteerhealError, match="longer than the generation"):
        BacktrackConfig(window=80).validate(64)


def test_run_configs_with_auto_alphas_need_exactly_one_target_and_read_from_toml_data():
    cfg = RunConfig.from_dict({"alphas": "auto", "target_kl": 1.0, "backtrack": {"threshold": 2.0, "window": 4}})
    cfg.validate()
    assert cfg.fixed_alphas() is None and cfg.dose_target().kind == "kl" and cfg.backtrack.window == 4
    assert RunConfig().fixed_alphas() == (2.0, 3.0, 4.0) and RunConfig().backtrack is None
    for data, says in (({"alphas": "auto"}, "needs one target"),
                       ({"alphas": "auto", "target_kl": 1.0, "target_kept": 0.5}, "needs one target"),
                       ({"alphas": "auto", "target_kept": 2.0}, "between 0 and 1"),
                       ({"alphas": "sometimes"}, "list of numbers or \"auto\""),
                       ({"target_kl": 1.0}, "needs alphas = \"auto\""),
                       ({"alphas": "auto", "target_kl": 1.0, "auto_spread": []}, "auto_spread"),
                       ({"max_new_tokens": 8, "backtrack": {"window": 16}}, "longer than the generation"),
                       ({"backtrack": "yes"}, "table of settings")):
        with pytest.raises(SteerhealError, match=says):
            RunConfig.from_dict(data).validate()


def test_dose_grids_and_settings_are_checked():
    assert check_grid([4, -2, 0, 4]) == [-2.0, 0.0, 4.0]
    for bad in ([], [float("nan")], [1e6], list(range(65))):
        with pytest.raises(SteerhealError):
            check_grid(bad)
    with pytest.raises(SteerhealError, match="drift_prompts"):
        DoseConfig(drift_prompts=1).validate()
    with pytest.raises(SteerhealError, match="n_prompts"):
        DoseConfig(n_prompts=0).validate()


def test_the_run_command_refuses_bad_dose_settings_with_exit_2_and_stores_nothing(tmp_path):
    from steerheal.store import Store
    from tests.conftest import run_cli

    db = tmp_path / "runs.db"
    for flags, says in ((["--max-new-tokens", "8", "--backtrack-threshold", "1", "--backtrack-window", "16"],
                         "longer than the generation"),
                        (["--backtrack-threshold", "-1"], "above 0"),
                        (["--alphas", "auto"], "needs one target"),
                        (["--alphas", "auto", "--target-kl", "nan"], "not a finite number"),
                        (["--alphas", "auto", "--target-kept", "2"], "between 0 and 1"),
                        (["--alphas", "2,x"], "numbers separated by commas")):
        out = run_cli("run", "--db", db, *flags)
        assert out.returncode == 2 and says in out.stderr, (flags, out.stderr)
        assert "Traceback" not in out.stderr
    assert not db.exists() or not Store(db).runs()
