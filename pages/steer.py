"""Steer: base and steered answers side by side, streamed; the steered text shaded by its
per-token KL against base; a batch of completions for curation as a background job."""

from __future__ import annotations

import html
import logging

import gradio as gr

from pages.common import Lab, as_float, as_int, error_html, friendly, job_status_md, parse_floats, vector_summary
from pages.dose import build_dose
from steerheal import jobs
from steerheal.backtrack import BacktrackConfig
from steerheal.config import LayerBand
from steerheal.errors import SteerhealError
from steerheal.presets import persona_presets

KL_FULL_SCALE = 2.0  # nats at which the shading is darkest
log = logging.getLogger("steerheal.app")


def vector_html(job: dict | None, presets: dict, now: float | None = None) -> str:
    """The line naming the vector this page steers with (pair, contexts, layers, when)."""
    line = html.escape(vector_summary(job, presets, now), quote=False)
    return f"<div class='sh-muted' id='steer-vector-line'><b>Vector:</b> {line}</div>"


def kl_html(tokens: list[tuple[str, float]], alpha: float) -> str:
    if not tokens:
        return ""
    spans = []
    for text, kl in tokens:
        strength = max(0.0, min(1.0, kl / KL_FULL_SCALE))
        spans.append(f"<span title='KL {kl:.3f} nats' style='background: rgba(220,38,38,{strength:.2f})'>"
                     f"{html.escape(text)}</span>")
    worst = max(kl for _, kl in tokens)
    mean = sum(kl for _, kl in tokens) / len(tokens)
    legend = (f"<div class='sh-muted'>Each token shaded by KL(steered ‖ base) at its position: white = 0, "
              f"darkest red ≥ {KL_FULL_SCALE:g} nats. Mean {mean:.3f}, max {worst:.3f} nats. Hover for values.</div>")
    return f"<div class='sh-kl' id='kl-shaded' data-alpha='{alpha:g}'>{''.join(spans)}</div>{legend}"


def replayed_html(pieces: list[str], token_kl: list[float], backtracks: list, alpha: float, window: int) -> str:
    """The steered text shaded by KL as in kl_html, each replayed span (decoded again at a lower α
    after its window's KL passed the threshold) outlined in blue, and a line per replay."""
    spans = []
    replayed: dict[int, object] = {}
    for b in backtracks:  # a later replay of the same window supersedes the earlier one
        for i in range(b.position, min(len(pieces), b.position + window)):
            replayed[i] = b
    for i, (text, kl) in enumerate(zip(pieces, token_kl)):
        strength = max(0.0, min(1.0, kl / KL_FULL_SCALE))
        b = replayed.get(i)
        mark = (f" class='sh-replayed' data-replay='{b.position}'" if b else "")
        title = f"KL {kl:.3f} nats" + (f"; replayed at α {b.alpha:g}" if b else "")
        spans.append(f"<span{mark} title='{title}' style='background: rgba(220,38,38,{strength:.2f})'>"
                     f"{html.escape(text)}</span>")
    lines = "".join(f"<li>tokens {b.position}–{b.position + window - 1}: window KL {b.window_kl:.2f} nats, "
                    f"{b.rolled_back} tokens undone, replayed at α {b.alpha:g}</li>" for b in backtracks)
    mean = sum(token_kl) / len(token_kl) if token_kl else 0.0
    legend = (f"<div class='sh-muted'>Each token shaded by KL(steered ‖ base), darkest red ≥ {KL_FULL_SCALE:g} nats "
              f"(mean {mean:.3f}); spans outlined in blue were decoded again at a lower α. "
              + (f"{len(backtracks)} replay{'s' if len(backtracks) != 1 else ''}:</div><ul id='replay-list'>{lines}</ul>"
                 if backtracks else "No window passed the threshold: nothing was replayed.</div>"))
    return (f"<div class='sh-kl' id='kl-shaded' data-alpha='{alpha:g}' data-replays='{len(backtracks)}'>"
            f"{''.join(spans)}</div>{legend}")


def refusal(err: BaseException) -> str:
    """An error's message for the page (a SteerhealError or gr.Error as written, anything else
    in one line)."""
    return getattr(err, "message", None) or str(err) or type(err).__name__


def preview_status_html(state: str, alpha: float | None = None) -> str:
    """The line beside Preview: what is running, or how the last preview ended."""
    a = f"{alpha:g}" if alpha is not None else "α"
    text = {"starting": f"Loading: base (α = 0) and steered (α = {a}) will decode side by side, as one batch.",
            "running": f"Generating base (α = 0) and steered (α = {a}) side by side, token by token…",
            "shading": "Shading the steered text by KL against base…",
            "done": "Done: base and steered from the same seed.",
            "stopped": "Stopped: the answers above are partial (cut off by Stop).",
            "error": "Not previewed: see the message beside the settings."}[state]
    cls = "sh-warn" if state in ("stopped", "error") else "sh-muted"
    return f"<div class='{cls}' id='preview-state' data-state='{state}'>{text}</div>"


def build(lab: Lab, timer: gr.Timer, personas: dict) -> dict:
    gr.Markdown("## Steer\nPreview the vector: the same prompt and seed answered without and with steering. "
                "Negative strengths steer towards the negative persona.")
    presets = persona_presets()
    vector_line = gr.HTML(vector_html(None, presets), elem_id="steer-vector")
    personas["vector_job"].change(lambda jid: vector_html(lab.store.job(jid) if jid else None, presets),
                                  personas["vector_job"], vector_line, queue=False, show_progress="hidden")
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox("My manager told me to hide a safety problem from the customers. What should I do?",
                                label="Prompt", lines=2, elem_id="steer-prompt")
        with gr.Column(scale=2):
            alpha = gr.Slider(-12, 12, value=3.0, step=0.25, label="Strength α", elem_id="steer-alpha")
            with gr.Row():
                layers = gr.Textbox("0.45-0.55", label="Layer band", elem_id="steer-layers",
                                    info="fractions of depth (0.45-0.55) or indices (13-15)")
                max_tokens = gr.Number(64, label="Max tokens", precision=0, elem_id="steer-max-tokens")
                seed = gr.Number(0, label="Seed", precision=0, elem_id="steer-seed")
            with gr.Row():
                replay = gr.Checkbox(False, label="Backtrack and replay", elem_id="steer-replay",
                                     info="decode a window again at α/2 when its KL to base is too high")
                replay_kl = gr.Number(1.0, label="Window KL above (nats)", elem_id="steer-replay-kl")
                replay_window = gr.Number(8, label="Window (tokens)", precision=0, elem_id="steer-replay-window")
            steer_error = gr.HTML(elem_id="steer-error")  # a refusal, until one of these settings changes
    with gr.Row():
        go = gr.Button("Preview", variant="primary", elem_id="preview-btn", scale=0, min_width=160)
        stop = gr.Button("Stop", elem_id="preview-stop", scale=0, min_width=100)
        preview_status = gr.HTML(elem_id="preview-status")
    preview_state = gr.State("idle")
    with gr.Row(equal_height=True):
        base_out = gr.Textbox(label="Base (α = 0)", lines=8, interactive=False, elem_id="base-out")
        steered_out = gr.Textbox(label="Steered", lines=8, interactive=False, elem_id="steered-out")
    shaded = gr.HTML(elem_id="kl-view")

    stopping: set[str] = set()  # sessions whose preview was asked to stop

    def preview(vector_path, prompt_text, a, band, n_tokens, seed_value, replay_on, replay_kl_v, replay_window_v,
                request: gr.Request):
        """Stream base and steered side by side, then shade the steered text. Stop asks it to end at
        the next token; it then says so itself (its last word, so no late token overwrites the
        note). A refusal (a layer band outside the model, a bad number, no vector) goes beside the
        settings and stays until one changes; it never raises, so the answers on the page are kept
        and no bare red "Error" badges are left. With backtracking on, the decoder itself measures
        each token's KL (no second pass) and replayed spans are outlined."""
        skip3 = (gr.skip(),) * 3
        session = getattr(request, "session_hash", None)
        stopping.discard(session)
        try:
            a = as_float(a, "Strength α", -100, 100)
            n_tokens = as_int(n_tokens, "Max tokens", 1, 1024)
            seed_value = as_int(seed_value, "Seed", 0)
            LayerBand(band)  # syntax check before the model loads
            backtrack = None
            if replay_on:
                backtrack = BacktrackConfig(threshold=as_float(replay_kl_v, "Window KL"),
                                            window=as_int(replay_window_v, "Window", 1, 1024)).validate(n_tokens)
            yield gr.skip(), gr.skip(), "", preview_status_html("starting", a), "", "running"  # old shading off
            steered, last = "", None
            if backtrack is None:
                pair = lab.preview.stream_pair(vector_path, prompt_text, a, band, n_tokens, seed_value)
            else:
                pair = lab.preview.stream_pair_replayed(vector_path, prompt_text, a, band, n_tokens, seed_value,
                                                        backtrack, should_stop=lambda: session in stopping)
            try:
                for item in pair:
                    base, steered = item[0], item[1]
                    last = item[2] if len(item) > 2 else None
                    if session in stopping:
                        yield base, steered, gr.skip(), preview_status_html("stopped"), gr.skip(), "stopped"
                        return
                    yield base, steered, gr.skip(), preview_status_html("running", a), gr.skip(), gr.skip()
            finally:
                pair.close()  # stops the decoding thread and frees the preview model at once
            if session in stopping:
                yield (*skip3, preview_status_html("stopped"), gr.skip(), "stopped")
                return
            if last is not None:
                shading = replayed_html(lab.preview.token_pieces(last.token_ids), last.token_kl, last.backtracks, a,
                                        backtrack.window)
                yield gr.skip(), gr.skip(), shading, preview_status_html("done", a), gr.skip(), "done"
                return
            yield (*skip3, preview_status_html("shading", a), gr.skip(), gr.skip())
            shading = kl_html(lab.preview.token_kl(vector_path, prompt_text, steered, a, band), a)
            yield gr.skip(), gr.skip(), shading, preview_status_html("done", a), gr.skip(), "done"
        except Exception as err:  # noqa: BLE001 - every refusal goes beside the settings
            if not isinstance(err, (SteerhealError, gr.Error)):
                log.exception("unexpected error in the preview")
                message = f"Something went wrong ({type(err).__name__}: {err}). The details are in the server log."
            else:
                message = refusal(err)
            gr.Warning(message)
            yield (*skip3, preview_status_html("error"), error_html("Not previewed", message), "error")

    go.click(preview, [personas["vector_path"], prompt, alpha, layers, max_tokens, seed, replay, replay_kl,
                       replay_window],
             [base_out, steered_out, shaded, preview_status, steer_error, preview_state], concurrency_limit=1)

    def ask_stop(state, request: gr.Request):
        if state != "running":
            return gr.skip()
        stopping.add(getattr(request, "session_hash", None))
        return "<div class='sh-muted' id='preview-state' data-state='stopping'>Stopping…</div>"

    stop.click(ask_stop, preview_state, preview_status, queue=False)
    for box in (prompt, alpha, layers, max_tokens, seed, replay, replay_kl, replay_window):
        box.change(lambda: "", None, steer_error, queue=False, show_progress="hidden")
    build_dose(lab, timer, personas, layers, alpha)

    gr.Markdown("### A batch for curation\nGenerate completions over several strengths in the background; "
                "the Curate page shows them with every filter score.")
    with gr.Row():
        n = gr.Number(12, label="Completions", precision=0, elem_id="batch-n")
        alphas = gr.Textbox("2, 3, 4", label="Strengths (comma-separated)", elem_id="batch-alphas")
        batch_tokens = gr.Number(48, label="Max tokens", precision=0, elem_id="batch-max-tokens")
        batch_go = gr.Button("Generate for curation", elem_id="batch-btn", scale=0, min_width=200)
    batch_error = gr.HTML(elem_id="batch-error")  # a refusal, until one of the batch's settings changes
    batch_status = gr.HTML(elem_id="batch-status")
    batch_job = gr.State(None)

    def submit_batch(*values):
        """Queue the batch, or say beside the button why not (never raises: the button comes back)."""
        try:
            jid, md = queue_batch(*values)
        except Exception as err:  # noqa: BLE001
            if not isinstance(err, (SteerhealError, gr.Error)):
                log.exception("unexpected error queueing a batch")
            message = refusal(err)
            gr.Warning(message)
            return gr.skip(), gr.skip(), error_html("Not started", message)
        return jid, md, ""

    @friendly
    def queue_batch(vector_path, count, alpha_text, band, n_tokens, seed_value):
        if not vector_path:
            raise SteerhealError("No steering vector yet: extract one on the Personas page first.")
        count = as_int(count, "Completions", 1, 2000)
        n_tokens = as_int(n_tokens, "Max tokens", 1, 1024)
        LayerBand(band)
        jid = jobs.submit(lab.store, "generate", dict(model=lab.preview.model_name, load_in_4bit=lab.preview.load_in_4bit, vector=vector_path, n=count,
                                                      alphas=parse_floats(alpha_text, "strength"), layers=band,
                                                      max_new_tokens=n_tokens,
                                                      seed=as_int(seed_value, "Seed", 0)))
        return jid, job_status_md(lab.store.job(jid), "generation")

    def poll(jid):
        if not jid:
            return gr.skip(), gr.update(interactive=True)
        job = lab.store.job(jid)
        md = job_status_md(job, "generation")
        if job["status"] == "completed":
            md += (f"<div class='sh-muted'>Batch {job['result']['batch_id']} with {job['result']['n']} completions is "
                   "ready on the Curate page.</div>")
        return md, gr.update(interactive=job["status"] not in ("queued", "running"))

    batch_go.click(lambda: gr.update(interactive=False), None, batch_go, queue=False).then(
        submit_batch, [personas["vector_path"], n, alphas, layers, batch_tokens, seed],
        [batch_job, batch_status, batch_error]).then(
        poll, batch_job, [batch_status, batch_go])
    timer.tick(poll, batch_job, [batch_status, batch_go], show_progress="hidden")
    for box in (n, alphas, batch_tokens, layers, seed, personas["vector_path"]):
        box.change(lambda: "", None, batch_error, queue=False, show_progress="hidden")
    return dict(layers=layers)
