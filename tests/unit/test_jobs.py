"""The job queue in the store: claimed once, cancellable, heartbeats, stale workers."""

import logging
import threading
import time

import pytest

from steerheal import jobs
from steerheal.errors import SteerhealError
from steerheal.store import Store


def test_a_job_is_claimed_by_exactly_one_of_many_workers(tmp_path):
    db = tmp_path / "runs.db"
    store = Store(db)
    ids = [store.submit_job("vector", {"n": i}, device=f"cuda:{i}") for i in range(5)]
    claims: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(name):
        mine = Store(db)  # each worker has its own connection, as separate processes do
        while (job := mine.claim_job(name)) is not None:
            with lock:
                claims.append((name, job["id"]))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for _, j in claims) == ids
    assert all(store.job(j)["status"] == "running" and store.job(j)["worker"] for j in ids)
    assert all(store.job(j)["attempts"] == 1 for j in ids)


def test_jobs_on_one_device_run_one_at_a_time_however_many_workers(tmp_path):
    db = tmp_path / "runs.db"
    store = Store(db)
    ids = [store.submit_job("generate", {"n": i}) for i in range(6)]  # all on this machine's device
    store.submit_job("vector", {}, device="cuda:1")  # another device is not held up
    running_now, overlaps, lock = set(), [], threading.Lock()

    def worker(name):
        mine = Store(db)
        idle = 0
        while idle < 20:
            job = mine.claim_job(name)
            if job is None:
                idle += 1
                time.sleep(0.01)
                continue
            with lock:
                if job["device"] == "default":
                    overlaps.append(len(running_now))
                    running_now.add(job["id"])
            time.sleep(0.02)
            with lock:
                running_now.discard(job["id"])
            mine.update_job(job["id"], status="completed", finished=time.time())

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [0] * 6, "a second job started on a busy device"
    assert all(store.job(j)["status"] == "completed" and store.job(j)["attempts"] == 1 for j in ids)
    assert store.jobs(kind="vector")[0]["status"] == "completed"


def test_cancelling_a_queued_job_means_no_worker_ever_runs_it(tmp_path):
    store = Store(tmp_path / "runs.db")
    jid = store.submit_job("vector", {})
    store.request_cancel(jid)
    assert store.job(jid)["status"] == "cancelled"
    assert store.claim_job("w") is None


def test_a_running_job_sees_cancel_through_its_heartbeat(tmp_path, monkeypatch):
    store = Store(tmp_path / "runs.db")
    started = threading.Event()

    def slow(store_, params, ctx, models):
        started.set()
        for _ in range(200):
            ctx.check()
            time.sleep(0.05)
        return {"finished": True}

    monkeypatch.setitem(jobs.HANDLERS, "vector", slow)
    monkeypatch.setattr(jobs, "HEARTBEAT_SECONDS", 0.05)
    jid = store.submit_job("vector", {})
    job = store.claim_job("w")
    runner = threading.Thread(target=jobs.run_job, args=(Store(tmp_path / "runs.db"), job))
    runner.start()
    started.wait(5)
    store.request_cancel(jid)
    runner.join(10)
    assert store.job(jid)["status"] == "cancelled"
    assert store.job(jid)["heartbeat"] > store.job(jid)["started"]


def test_a_job_whose_worker_died_is_marked_interrupted_with_its_run(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run({"rounds": 1}, "bundled", 0)
    jid = store.submit_job("loop", {"run_id": run_id}, run_id=run_id)
    store.claim_job("w")
    assert store.mark_stale_jobs(timeout=60) == []  # fresh heartbeat: still alive
    store.update_job(jid, heartbeat=time.time() - 120)
    assert store.mark_stale_jobs(timeout=60) == [jid]
    assert store.job(jid)["status"] == "interrupted"
    assert store.run(run_id)["status"] == "interrupted"


def test_job_errors_become_readable_job_failures(tmp_path, monkeypatch):
    store = Store(tmp_path / "runs.db")

    def bad(*_):
        raise SteerhealError("The context pool is empty.")

    def broken(*_):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(jobs.HANDLERS, "vector", bad)
    monkeypatch.setitem(jobs.HANDLERS, "generate", broken)
    store.submit_job("vector", {})
    store.submit_job("generate", {})
    assert jobs.work(store, once=True) == 1 and jobs.work(store, once=True) == 1
    first, second = store.jobs(limit=2)[::-1]
    assert first["status"] == "failed" and first["error"] == "The context pool is empty."
    assert second["status"] == "failed" and "ZeroDivisionError" in second["error"]
    with pytest.raises(SteerhealError, match="Unknown job kind"):
        jobs.submit(store, "mine-bitcoin", {})


def test_a_stage_stopping_on_cancel_ends_the_job_cancelled_without_a_traceback(tmp_path, monkeypatch, caplog):
    """The loop's stages stop with a plain InterruptedError when cancel was asked for: that is a
    normal end (job cancelled, nothing logged as an error), while the same error without a cancel
    request is a failure."""
    store = Store(tmp_path / "runs.db")

    def stops(store_, params, ctx, models):
        if params.get("cancel"):
            ctx.cancelled.set()
        raise InterruptedError("cancelled")

    monkeypatch.setitem(jobs.HANDLERS, "vector", stops)
    cancelled = store.submit_job("vector", {"cancel": True})
    with caplog.at_level(logging.ERROR):
        jobs.run_job(store, store.claim_job("w"))
    assert store.job(cancelled)["status"] == "cancelled" and "Traceback" not in caplog.text
    failed = store.submit_job("vector", {})
    jobs.run_job(store, store.claim_job("w"))
    assert store.job(failed)["status"] == "failed"
