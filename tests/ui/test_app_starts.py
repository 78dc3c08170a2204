"""`make run` starts app.py: localhost by default; exposed only with credentials."""

import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.ui.conftest import ROOT, free_port, start_app, stop_app, wait_http


def test_app_serves_on_localhost_only_by_default(tmp_path):
    port = free_port()
    proc = start_app(tmp_path / "runs.db", port, workers=0, log=tmp_path / "app.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "steerheal" in body.lower()
    finally:
        stop_app(proc)
    out = (tmp_path / "app.log").read_text()
    assert "127.0.0.1" in out and "0.0.0.0" not in out


def test_exposing_the_app_without_credentials_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STEERHEAL_AUTH"}
    res = subprocess.run([sys.executable, str(ROOT / "app.py"), "--host", "0.0.0.0", "--db", str(tmp_path / "r.db"),
                          "--workers", "0"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert res.returncode != 0
    assert "STEERHEAL_AUTH" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r.db").exists(), "nothing may be created when the app refuses to start"


def test_4bit_without_a_gpu_is_refused_before_anything_is_created(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine 4-bit is allowed")
    res = subprocess.run([sys.executable, str(ROOT / "app.py"), "--4bit", "--db", str(tmp_path / "r.db"),
                          "--workers", "0"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode != 0 and "4-bit loading needs a CUDA GPU" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r.db").exists()


def test_an_exposed_app_refuses_unauthenticated_requests(tmp_path):
    port = free_port()
    proc = start_app(tmp_path / "runs.db", port, workers=0, host="0.0.0.0",
                     extra_env={"STEERHEAL_AUTH": "alice:s3cret-pass"}, log=tmp_path / "app.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5)
            status = 200
        except urllib.error.HTTPError as err:
            status = err.code
        assert status in (401, 403)
        login = urllib.request.Request(f"http://127.0.0.1:{port}/login", method="POST",
                                       data=b"username=alice&password=wrong",
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            urllib.request.urlopen(login, timeout=5)
            wrong = 200
        except urllib.error.HTTPError as err:
            wrong = err.code
        assert wrong in (400, 401, 403)
    finally:
        stop_app(proc)


def _workers_for(db) -> list[int]:
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "steerheal.cli worker" in cmd and str(db) in cmd:
                pids.append(int(proc.name))
    return pids


def test_the_apps_idle_worker_stops_with_the_app(tmp_path):
    import signal
    import time

    for how in (signal.SIGTERM, signal.SIGKILL):
        db = tmp_path / f"runs-{how.name}.db"
        port = free_port()
        proc = start_app(db, port, workers=1, log=tmp_path / "app.log")
        try:
            wait_http(f"http://127.0.0.1:{port}/", proc)
            deadline = time.time() + 30
            while not _workers_for(db) and time.time() < deadline:
                time.sleep(0.2)
            assert _workers_for(db), "make run must start a worker beside the app"
        finally:
            os.kill(proc.pid, how)
            proc.wait(timeout=30)
        deadline = time.time() + 30
        while _workers_for(db) and time.time() < deadline:
            time.sleep(0.5)
        assert not _workers_for(db), f"the worker outlived the app ({how.name})"
