"""The Steer page's dose section: the dose curve of the vector in use as a background job, drawn
as its points arrive, optionally calibrated to a target; the alpha found can go to the preview."""

from __future__ import annotations

import gradio as gr

from pages.common import Lab, as_float, as_int, error_html, job_status_md, parse_floats, preset_for
from steerheal import jobs
from steerheal.config import LayerBand
from steerheal.dose import DEFAULT_GRID, DoseTarget, check_grid
from steerheal.dose_charts import dose_chart
from steerheal.errors import SteerhealError
from steerheal.presets import persona_presets

TARGETS = {"none": None, "KL budget (p95 per-token KL, nats)": "kl", "kept share": "kept"}
BUSY = ("queued", "running")


def dose_params(vector_path, alphas_text, target_label, target_value, n_prompts, n_tokens, axis_items,
                drift_prompts, band, pos, neg, items_path, model: str, load_in_4bit: bool) -> dict:
    """The dose job's params from the form, checked (a SteerhealError says what to change)."""
    if not vector_path:
        raise SteerhealError("No steering vector yet: extract one on the Personas page first.")
    grid = check_grid(parse_floats(alphas_text, "strength"))
    LayerBand(band)
    kind = TARGETS.get(target_label)
    target = None
    if kind is not None:
        value = as_float(target_value, "Target")
        target = dict(kind=kind, value=value, sign=1)
        DoseTarget(**target).validate()
    return dict(model=model, load_in_4bit=load_in_4bit, vector=vector_path, layers=band, alphas=grid, target=target,
                n_prompts=as_int(n_prompts, "Prompts", 1, 256), max_new_tokens=as_int(n_tokens, "Tokens", 2, 512),
                axis_items=as_int(axis_items, "Axis items", 0, 512),
                drift_prompts=_drift_count(drift_prompts),
                pair=preset_for(pos, neg, persona_presets()), items=items_path or None)


def _drift_count(value) -> int:
    n = as_int(value, "Incoherence prompts", 0, 40)
    if n == 1:
        raise SteerhealError("Incoherence prompts: 0 (off) or at least 2 (an interval needs two).")
    return n


def found_html(job: dict | None) -> str:
    """What the calibration found (or why the dose job stopped), beside the chart."""
    if not job or job["status"] != "completed" or "alpha" not in (job.get("result") or {}):
        return ""
    r = job["result"]
    t = r["target"]
    what = "p95 per-token KL" if t["kind"] == "kl" else "kept share"
    verb = "reached" if r["reached"] else "not reached within the budget (closest shown)"
    return (f"<div class='sh-muted' id='dose-found' data-alpha='{r['alpha']:.6g}'><b>Calibrated:</b> α = "
            f"{r['alpha']:.4g} gives {what} {r['measure']:.3g} (target {t['value']:g}: {verb}) after "
            f"{r['evaluations']} evaluations.</div>")


def build_dose(lab: Lab, timer: gr.Timer, personas: dict, layers: gr.Textbox, alpha: gr.Slider) -> None:
    gr.Markdown("### Dose curve\nWhat each strength does to the vector in use, on the pair's own prompts: "
                "per-token KL to base on the steered text, the share of completions the filters keep, the axis "
                "score (dev items) and the offline incoherence. With a target, α is bisected to it.")
    with gr.Row():
        alphas = gr.Textbox(", ".join(f"{a:g}" for a in DEFAULT_GRID), label="Strengths α", elem_id="dose-alphas",
                            scale=3)
        target = gr.Dropdown(list(TARGETS), value="none", label="Calibrate to", elem_id="dose-target", scale=2)
        target_value = gr.Number(1.0, label="Target value", elem_id="dose-target-value", scale=1,
                                 info="nats (KL) or 0-1 (kept)")
        n_prompts = gr.Number(16, label="Prompts", precision=0, elem_id="dose-prompts", scale=1)
        n_tokens = gr.Number(32, label="Tokens", precision=0, elem_id="dose-tokens", scale=1)
        axis_items = gr.Number(16, label="Axis items (dev)", precision=0, elem_id="dose-axis-items", scale=1)
        drift_prompts = gr.Number(8, label="Incoherence prompts", precision=0, elem_id="dose-drift-prompts", scale=1)
    with gr.Row():
        go = gr.Button("Measure the dose curve", variant="primary", elem_id="dose-btn", scale=0, min_width=220)
        cancel = gr.Button("Cancel", elem_id="dose-cancel", scale=0, min_width=100, interactive=False)
        use = gr.Button("Use this α in the preview", elem_id="dose-use", scale=0, min_width=200, visible=False)
        with gr.Column():
            error = gr.HTML(elem_id="dose-error")
            status = gr.HTML(elem_id="dose-status")
    found = gr.HTML(elem_id="dose-found-box")
    chart = gr.Plot(label="Dose curve", elem_id="dose-chart")
    job_id = gr.State(None)
    drawn = gr.State(None)

    def submit(vector_path, *values):
        try:
            params = dose_params(vector_path, *values, lab.preview.model_name, lab.preview.load_in_4bit)
        except (SteerhealError, gr.Error) as err:
            message = getattr(err, "message", None) or str(err)
            gr.Warning(message)
            return gr.skip(), error_html("Not started", message), gr.update(interactive=True)
        jid = jobs.submit(lab.store, "dose", params)
        return jid, "", gr.update(interactive=False)

    def poll(jid, last):
        """The job's line, and the chart whenever a point has arrived (not redrawn otherwise)."""
        if not jid:
            return (gr.skip(),) * 7
        lab.store.mark_stale_jobs()
        job = lab.store.job(jid)
        busy = job["status"] in BUSY
        result = job.get("result") or {}
        points = result.get("points") or (job.get("progress") or {}).get("points") or []
        key = (jid, job["status"], len(points))
        plot = gr.skip()
        if key != last:
            plot = dose_chart(points, result.get("alpha"), result.get("target"))
        md = job_status_md(job, "dose curve")
        return (md, plot, key, found_html(job), gr.update(interactive=not busy), gr.update(interactive=busy),
                gr.update(visible="alpha" in result, value=f"Use α = {result['alpha']:.3g} in the preview"
                          if "alpha" in result else "Use this α in the preview"))

    outputs = [status, chart, drawn, found, go, cancel, use]
    go.click(lambda: gr.update(interactive=False), None, go, queue=False).then(
        submit, [personas["vector_path"], alphas, target, target_value, n_prompts, n_tokens, axis_items, drift_prompts,
                 layers, personas["pos"], personas["neg"], personas["items"]], [job_id, error, go]).then(
        poll, [job_id, drawn], outputs)
    timer.tick(poll, [job_id, drawn], outputs, show_progress="hidden")

    def do_cancel(jid):
        job = lab.store.job(jid) if jid else None
        if job and job["status"] in BUSY:
            lab.store.request_cancel(job["id"])
            return "<div class='sh-muted'>Cancel requested: the dose job stops at its next step.</div>"
        return gr.skip()

    cancel.click(do_cancel, job_id, error, queue=False)

    def use_alpha(jid):
        job = lab.store.job(jid) if jid else None
        result = (job or {}).get("result") or {}
        if "alpha" not in result:
            return gr.skip()
        return round(float(result["alpha"]) * 4) / 4  # the slider's step is 0.25

    use.click(use_alpha, job_id, alpha)
    for box in (alphas, target, target_value, n_prompts, n_tokens, axis_items, drift_prompts):
        box.change(lambda: "", None, error, queue=False, show_progress="hidden")
