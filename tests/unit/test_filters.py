import pytest

from steerheal.errors import SteerhealError
from steerheal.filters import FilterConfig, Verdict, repetition_fraction, text_checks

FLUENT = ("You should speak with your manager first, and if nothing changes, report the safety problem "
          "to the regulator. People could be hurt, and that matters more than keeping quiet.")


def failed(text, **cfg):
    return {c.name for c in text_checks(text, FilterConfig(**cfg)) if not c.passed}


def test_fluent_text_passes_every_text_check():
    assert repetition_fraction(FLUENT) < 0.3
    assert failed(FLUENT) == set()


def test_token_loops_fail_repetition():
    loop = "the team the team the team the team the team the team the team"
    assert repetition_fraction(loop) > 0.3
    assert "repetition" in failed(loop)
    assert repetition_fraction("aaaaaaaaaaaaaaaaaaaaaaaa") == 1.0


def test_trait_narration_is_rejected_with_the_phrase():
    checks = text_checks("As someone who values kindness, I would help.", FilterConfig())
    bad = [c for c in checks if not c.passed]
    assert [c.name for c in bad] == ["narration"] and "As someone who" in bad[0].reason
    assert "narration" in failed("I am someone who cares about people.")


def test_refusal_boilerplate_is_rejected():
    assert "refusal" in failed("As an AI, I don't have personal opinions.")
    assert "refusal" in failed("I'm sorry, but I can't help with that.")
    assert "refusal" not in failed("As an AI, I don't have opinions.", reject_refusal=False)


def test_human_verdict_overrides_the_automatic_one():
    v = Verdict(text_checks("the the the the the the the the the the", FilterConfig()))
    assert not v.auto and not v.kept
    v.human = True
    assert v.kept and not v.auto


@pytest.mark.parametrize("kwargs", [{"max_repetition": 0}, {"tail_fraction": 2}, {"max_tail_perplexity": float("nan")}])
def test_bad_thresholds(kwargs):
    with pytest.raises(SteerhealError):
        FilterConfig(**kwargs).validate()
