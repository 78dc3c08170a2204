import pytest
import torch

from steerheal.divergence import aggregate, summarise_kl, token_kl
from steerheal.errors import SteerhealError


def loop_spike_kl():
    """A coherent completion (KL 0.03 a token) with a 4-token loop spike in 60 tokens."""
    kl = torch.full((60,), 0.03)
    kl[30:34] = 5.8
    return kl


def test_rmse_fires_on_a_short_loop_where_mean_does_not():
    kl, tau = loop_spike_kl(), 0.5
    assert aggregate(kl, "mean") < tau  # the spike is diluted: a mean barrier never fires
    assert aggregate(kl, "rmse") > tau  # ...the rmse barrier does
    assert float(aggregate(kl, "rmse")) == pytest.approx(1.5, abs=0.05)
    assert aggregate(kl, "max") == pytest.approx(5.8)


def test_coherent_completion_is_far_under_tau():
    s = summarise_kl(torch.full((60,), 0.03))
    assert all(v == pytest.approx(0.03, abs=1e-3) for v in s.values())


def test_token_kl_is_zero_for_identical_and_positive_otherwise():
    a = torch.log_softmax(torch.randn(5, 11), -1)
    b = torch.log_softmax(torch.randn(5, 11), -1)
    assert torch.allclose(token_kl(a, a), torch.zeros(5), atol=1e-6)
    assert (token_kl(a, b) > 0).all()


def test_unknown_aggregate():
    with pytest.raises(SteerhealError, match="Unknown KL aggregate 'median'"):
        aggregate(torch.ones(3), "median")
