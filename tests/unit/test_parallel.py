"""Batches on a few threads at once (steerheal.parallel)."""

import threading

import pytest
import torch

from steerheal.parallel import auto_workers, map_batches


def test_every_batch_once_and_threads_restored():
    before = torch.get_num_threads()
    seen = []

    def work(x):
        seen.append(threading.current_thread().name)
        return x * x

    out = dict(map_batches(work, list(range(7)), workers=2))
    assert out == {i: i * i for i in range(7)}
    assert all(name.startswith("steerheal-batch") for name in seen)
    assert torch.get_num_threads() == before


def test_one_worker_runs_in_order_in_the_calling_thread():
    names = []
    out = list(map_batches(lambda x: names.append(threading.current_thread().name) or x, [3, 1, 2], workers=1))
    assert out == [(0, 3), (1, 1), (2, 2)]
    assert set(names) == {threading.current_thread().name}


def test_an_error_stops_the_batches_not_started():
    started = []

    def work(x):
        started.append(x)
        if x == 0:
            raise ValueError("bad batch")
        return x

    with pytest.raises(ValueError, match="bad batch"):
        list(map_batches(work, list(range(20)), workers=2))
    assert len(started) < 20


def test_auto_workers():
    assert auto_workers(torch.device("cpu"), 3) == 3
    assert auto_workers(torch.device("cuda"), 0) == 1
    assert auto_workers(torch.device("cpu"), 0) == (2 if torch.get_num_threads() >= 2 else 1)
