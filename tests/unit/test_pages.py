"""Pure helpers behind the pages: verdicts under new thresholds, weak-pair warnings, diffs."""

import json

from pages.curate import table, verdict_under
from pages.personas import norm_warnings, pair_warnings
from pages.results import highlight_changes
from pages.steer import kl_html
from steerheal.filters import FilterConfig


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
