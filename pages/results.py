"""Results: per-round charts for one or more runs, the probe answers per round with what
changed highlighted, and exports (adapters, merged model, vector, HTML report)."""

from __future__ import annotations

import difflib
import html

import gradio as gr

from pages.common import Lab, as_int, friendly, job_status_md, run_choices
from steerheal import charts, jobs
from steerheal.errors import SteerhealError
from steerheal.evals.tinymfv_data import demo_data_note
from steerheal.report import write_report


def highlight_changes(before: str, after: str) -> str:
    """`after` with the words that are new since `before` marked."""
    a, b = before.split(), after.split()
    out = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
        words = html.escape(" ".join(b[j1:j2]))
        if not words:
            continue
        out.append(words if op == "equal" else f"<mark>{words}</mark>")
    return " ".join(out)


def probe_html(probes: list[dict]) -> str:
    """One table per probe prompt: a column per round, new words since the previous round marked."""
    if not probes:
        return "<p class='sh-muted'>No probe answers yet: they appear after the base eval.</p>"
    table = charts.probe_table(probes)
    parts = []
    for prompt, row in table.iterrows():
        cells, previous = [], None
        for col, answer in row.items():
            answer = answer if isinstance(answer, str) else ""
            shown = html.escape(answer) if previous is None else highlight_changes(previous, answer)
            cells.append(f"<td><div class='sh-muted'>{html.escape(str(col))}</div>{shown}</td>")
            previous = answer
        parts.append(f"<h4>{html.escape(str(prompt))}</h4><table><tr>{''.join(cells)}</tr></table>")
    return ("<div class='sh-probe' id='probe-answers'><div class='sh-muted'>Greedy answers, no steering. "
            "<mark>Marked</mark> words are new since the column to the left.</div>" + "".join(parts) + "</div>")


def build(lab: Lab, timer: gr.Timer) -> None:
    gr.Markdown("## Results\nPer round: steered (red) against healed (green), with the base model and the "
                "prompting baseline as dashed reference lines. Charts follow a run while it goes.")
    with gr.Row():
        picked = gr.Dropdown(choices=run_choices(lab.store), multiselect=True, label="Runs", elem_id="results-runs",
                             scale=4)
        refresh = gr.Button("Refresh", elem_id="results-refresh", scale=0, min_width=120)
    warning = gr.HTML(elem_id="results-warning")
    with gr.Row():
        auth = gr.Plot(label="auth_nats", elem_id="chart-auth")
        care = gr.Plot(label="care_nats", elem_id="chart-care")
    with gr.Row():
        incoherence = gr.Plot(label="incoherence", elem_id="chart-incoherence")
        path = gr.Plot(label="trajectory", elem_id="chart-trajectory")
    gr.Markdown("### Probe answers per round")
    probes = gr.HTML(elem_id="results-probes")
    gr.Markdown("### Export")
    with gr.Row():
        export_round = gr.Number(0, label="Round", precision=0, elem_id="export-round")
        export_btn = gr.Button("Export adapters + merged model + vector", elem_id="export-btn")
        report_btn = gr.Button("HTML report", elem_id="report-btn")
    export_md = gr.HTML(elem_id="export-status")
    report_file = gr.File(label="Report", elem_id="report-file", visible=False)
    export_job = gr.State(None)
    shown_key = gr.State(None)

    def key_of(run_ids) -> tuple:
        """What the charts depend on: redraw only when it changes (no flicker while polling)."""
        ids = sorted(int(r) for r in run_ids or [])
        return tuple(ids), tuple(lab.store.change_marker("evals", r) for r in ids), \
            tuple(lab.store.change_marker("probes", r) for r in ids)

    @friendly
    def draw(run_ids, last_key, force=False):
        key = key_of(run_ids)
        if not force and key == last_key:
            return (gr.skip(),) * 7
        ids = list(key[0])
        if not ids:
            return None, None, None, None, "<p class='sh-muted'>Pick a run.</p>", "", key
        evals = [e for r in ids for e in lab.store.rows("evals", r)]
        demo = demo_data_note(evals)
        warn = f"<div class='sh-warn' id='demo-data'><b>Demo data:</b> {html.escape(demo)}</div>" if demo else ""
        base = [e for e in evals if e["stage"] == "base"]
        if base and min(e["coherence"] for e in base) < 0.85:
            warn += (f"<div class='sh-warn'><b>Warning:</b> Base coherence is {min(e['coherence'] for e in base):.3f} (under 0.85): "
                    "this model mostly fails the answer format, so its tinymfv numbers are not meaningful. "
                    "Use a larger model for real results.</div>")
        if not evals:
            return None, None, None, None, warn, probe_html([]), key
        return (charts.metric_per_round(evals, "auth_nats"),
                charts.metric_per_round(evals, "care_nats"),
                charts.incoherence_per_round(evals),
                charts.trajectory(evals),
                warn, probe_html(lab.store.rows("probes", ids[0])), key)

    outputs = [auth, care, incoherence, path, warning, probes, shown_key]
    picked.change(lambda r, k: draw(r, k, True), [picked, shown_key], outputs)
    refresh.click(lambda r, k: draw(r, k, True), [picked, shown_key], outputs).then(
        lambda: gr.update(choices=run_choices(lab.store)), None, picked)

    @friendly
    def do_export(run_ids, round_):
        ids = [int(r) for r in run_ids or []]
        if len(ids) != 1:
            raise SteerhealError("Pick exactly one run to export.")
        round_ = as_int(round_, "Round", 0)
        from steerheal.export import round_adapters

        round_adapters(lab.store, ids[0], round_)  # a clear error now rather than in the worker
        out = lab.data_dir / "exports" / f"run-{ids[0]}-round-{round_}"
        if out.exists() and any(out.iterdir()):
            raise SteerhealError(f"{out} already holds an export of this round.")
        jid = jobs.submit(lab.store, "export", dict(run_id=ids[0], round=round_, out=str(out)), run_id=ids[0])
        return jid, job_status_md(lab.store.job(jid), "export")

    def poll_export(jid):
        if not jid:
            return gr.skip()
        job = lab.store.job(jid)
        md = job_status_md(job, "export")
        if job["status"] == "completed":
            md += f"<div class='sh-muted'>Written to <code>{html.escape(job['params']['out'])}</code>: " \
                  "adapters/ (PEFT), merged/ (transformers), vector.safetensors.</div>"
        return md

    @friendly
    def do_report(run_ids):
        ids = [int(r) for r in run_ids or []]
        if not ids:
            raise SteerhealError("Pick at least one run for the report.")
        out = lab.data_dir / "reports" / f"report-run-{'-'.join(map(str, ids))}.html"
        return gr.update(value=str(write_report(lab.store, ids, out)), visible=True)

    export_btn.click(do_export, [picked, export_round], [export_job, export_md])
    report_btn.click(do_report, picked, report_file)

    def tick(run_ids, last_key, jid):
        return (gr.update(choices=run_choices(lab.store)), *draw(run_ids, last_key), poll_export(jid))

    timer.tick(tick, [picked, shown_key, export_job], [picked, *outputs, export_md], show_progress="hidden")
