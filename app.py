"""steerheal web app (Gradio). `make run` starts it on http://127.0.0.1:7860 with one worker.

    python app.py [--host H] [--port P] [--db PATH] [--workers N] [--model bundled]

The pages live in pages/; long work runs in worker processes (`steerheal worker`) that
share the store, so closing the browser or restarting the app does not stop a job.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import subprocess
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
POLL_SECONDS = 2.0


def build_app(db_path: str, model: str = "bundled", load_in_4bit: bool = False):
    import gradio as gr

    from pages import curate, heal, personas, results, steer
    from pages.common import Lab

    lab = Lab.open(db_path, model, load_in_4bit)
    with gr.Blocks(title="steerheal") as demo:
        gr.Markdown(f"# steerheal <span class='sh-muted' style='font-size:.5em'>model {model}"
                    f"{' (4-bit)' if load_in_4bit else ''} · store "
                    f"{lab.store.path}</span>")
        timer = gr.Timer(POLL_SECONDS)
        # What each page keeps across a refresh, in the browser's localStorage. At the top level:
        # a tab's components mount only when the tab is first opened, and a BrowserState reads and
        # writes localStorage only while mounted.
        kept = {name: gr.BrowserState(None, storage_key=f"steerheal-{name}") for name in ("heal", "curate", "results")}
        with gr.Tabs(elem_id="pages"):
            with gr.Tab("Personas", id="personas", elem_id="tab-personas"):
                persona_parts = personas.build(lab, timer)
            with gr.Tab("Steer", id="steer", elem_id="tab-steer"):
                steer_parts = steer.build(lab, timer, persona_parts)
            with gr.Tab("Curate", id="curate", elem_id="tab-curate"):
                curate.build(lab, timer, demo, kept["curate"])
            with gr.Tab("Heal", id="heal", elem_id="tab-heal"):
                heal.build(lab, timer, persona_parts, steer_parts, demo, kept["heal"])
            with gr.Tab("Results", id="results", elem_id="tab-results"):
                results.build(lab, timer, demo, kept["results"])
    demo.lab = lab
    return demo


def auth_from_env(host: str) -> tuple[str, str] | None:
    """Credentials from STEERHEAL_AUTH=user:password; required when the app is exposed."""
    raw = os.environ.get("STEERHEAL_AUTH", "")
    if raw:
        user, sep, password = raw.partition(":")
        if not sep or not user or not password:
            raise SystemExit("steerheal: error: STEERHEAL_AUTH must look like user:password.")
        return user, password
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"steerheal: error: refusing to serve on {host} without credentials. Anyone who can reach "
                         "that address could drive your GPU and read your runs. Set STEERHEAL_AUTH=user:password, "
                         "or bind to 127.0.0.1 (the default).")
    return None


def start_workers(db_path: str, count: int) -> list[subprocess.Popen]:
    """Workers run in their own session: Ctrl-C on the app does not reach them, and when the
    app exits they are asked (SIGTERM) to finish the job in hand and then stop. So restarting
    the UI never cuts a job short."""
    procs = [subprocess.Popen([sys.executable, "-m", "steerheal.cli", "worker", "--db", db_path, "--nice", "10",
                               "--exit-with-parent", str(os.getpid())],
                              start_new_session=True) for _ in range(count)]

    def stop() -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    atexit.register(stop)
    return procs


def main() -> None:
    ap = argparse.ArgumentParser(description="steerheal web app")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1 unless you set STEERHEAL_AUTH)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--db", default="runs.db", help="the SQLite store; artefacts go beside it")
    ap.add_argument("--workers", type=int, default=1, help="worker processes to start (0: run `steerheal worker` "
                                                           "yourself)")
    ap.add_argument("--model", default="bundled", help="model for previews and new jobs")
    ap.add_argument("--4bit", dest="load_in_4bit", action="store_true",
                    help="load that model in 4-bit (bitsandbytes NF4; CUDA GPUs only); runs train QLoRA")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    auth = auth_from_env(args.host)
    if args.workers < 0:
        raise SystemExit("steerheal: error: --workers must be 0 or more.")
    if args.load_in_4bit:
        from steerheal.errors import SteerhealError
        from steerheal.models import check_4bit_possible

        try:
            check_4bit_possible()
        except SteerhealError as err:
            raise SystemExit(f"steerheal: error: {err}") from None
    from pages.common import CSS, theme

    demo = build_app(args.db, args.model, args.load_in_4bit)
    # SIGTERM (docker stop, kill) exits through atexit, so the workers hear about it too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    start_workers(str(demo.lab.store.path), args.workers)
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port, auth=auth,
                                                   css=CSS, theme=theme(), show_error=False, footer_links=["gradio", "settings"])


if __name__ == "__main__":
    main()
