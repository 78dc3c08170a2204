"""Start the real app (with its worker) on a free port and a fresh store; drive it in Chromium."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("STEERHEAL_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("STEERHEAL_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def start_app(db: Path, port: int, workers: int = 1, extra_env: dict | None = None, host: str = "127.0.0.1",
              log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--db", str(db), "--port", str(port),
                             "--workers", str(workers), "--host", host], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_app(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def served(db: Path, workers: int = 1):
    """The app on a free local port over this store (with `workers` workers), stopped afterwards;
    the end of its log is printed, so a failing test shows it."""
    log = db.parent / "app.log"
    port = free_port()
    proc = start_app(db, port, workers=workers, log=log)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, proc)
        yield url
    finally:
        stop_app(proc)
        print(log.read_text()[-5000:])


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    with served(tmp / "runs.db") as url:
        yield url, tmp


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("STEERHEAL_REQUIRE_BROWSER") == "1":  # make test / CI: a missing browser is a failure
            pytest.fail(f"Chromium not found at {CHROMIUM}")
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (make test does this)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(autouse=True)
def close_pages_after_each_test(request):
    """A test's pages close when it ends: an open lab page polls the app twice a second, and pages
    left open by earlier tests of a module slowed the next test's preview (its Stop note came late)."""
    yield
    if "browser" in request.fixturenames:
        for context in request.getfixturevalue("browser").contexts:
            for page in list(context.pages):
                page.close()


@pytest.fixture
def shot():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def open_lab(browser, url: str):
    """A new page on the lab, once its first page is usable."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_text("Extract vector").wait_for()
    return page


# The Heal form's instrument fields at their smallest (as tests.conftest.TINY_INSTRUMENTS for runs
# started in code): 2 axis items, 2 neutral prompts of 4 tokens.
TINY_HEAL_INSTRUMENTS = (("heal-axis-limit", 2), ("heal-drift-prompts", 2), ("heal-drift-tokens", 4))
