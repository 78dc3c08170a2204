"""steerheal web app (Gradio). `make run` starts it on http://127.0.0.1:7860.

The full lab (personas, steer, curate, heal, results) arrives with the UI issue; this
entry point already takes the final command-line flags.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def build_app(db_path: str):
    import gradio as gr

    with gr.Blocks(title="steerheal") as demo:
        gr.Markdown(
            "# steerheal\n"
            "Steer a model along a persona axis, then heal the steered behaviour into LoRA adapters.\n\n"
            f"Store: `{db_path}`. The lab pages are not built yet: use the CLI "
            "(`steerheal vector`, `steerheal steer`) meanwhile."
        )
    return demo


def main() -> None:
    ap = argparse.ArgumentParser(description="steerheal web app")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--db", default="runs.db")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    build_app(args.db).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
