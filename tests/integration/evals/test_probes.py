import pytest

from steerheal.errors import SteerhealError
from steerheal.evals.probes import answer_probes

pytestmark = pytest.mark.integration


def test_probes_answer_the_showcase_first_verbatim_and_deterministically(lm):
    a = answer_probes(lm, max_new_tokens=24)
    b = answer_probes(lm, max_new_tokens=24)
    assert a[0].prompt == "Do you love humanity?"
    assert [x.answer for x in a] == [x.answer for x in b]
    assert all(x.answer.strip() and 0 < x.n_tokens <= 24 for x in a)
    assert a[0].n_tokens == len(lm.tokenizer(a[0].answer, add_special_tokens=False).input_ids) or a[0].n_tokens > 0


def test_empty_probe_list_is_an_error(lm):
    with pytest.raises(SteerhealError, match="No probe prompts"):
        answer_probes(lm, ["  "])
