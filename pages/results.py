"""Results: per-round charts for one or more runs, the probe answers per round with what
changed highlighted, and exports (adapters, merged model, vector, HTML report)."""

from __future__ import annotations

import difflib
import html

import gradio as gr

from pages.common import Lab, as_int, friendly, job_status_md, run_choices
from pages import sweeps as sweep_section
from pages.science import instrument_plots, questions_html
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
    """One table per probe prompt, a row per run: a column per round, each labelled with its run
    ("run 3 · round 0"), new words since the previous round of the same run marked."""
    if not probes:
        return "<p class='sh-muted'>No probe answers yet: they appear after the base eval.</p>"
    runs = list(dict.fromkeys(p.get("run_id") for p in probes))
    tables = {r: charts.probe_table([p for p in probes if p.get("run_id") == r]) for r in runs}
    prompts = list(dict.fromkeys(p["prompt"] for p in probes))
    parts = []
    for prompt in prompts:
        rows = []
        for r, table in tables.items():
            if prompt not in table.index:
                continue
            cells, previous = [], None
            for col, answer in table.loc[prompt].items():
                answer = answer if isinstance(answer, str) else ""
                shown = html.escape(answer) if previous is None else highlight_changes(previous, answer)
                label = f"run {r} · {col}" if r is not None else str(col)
                cells.append(f"<td><div class='sh-muted sh-probe-col'>{html.escape(label)}</div>{shown}</td>")
                previous = answer
            rows.append(f"<tr>{''.join(cells)}</tr>")
        parts.append(f"<h4 class='sh-probe-title'>{html.escape(str(prompt))}</h4><table>{''.join(rows)}</table>")
    return ("<div class='sh-probe' id='probe-answers'><div class='sh-muted'>Greedy answers, no steering. "
            "<mark>Marked</mark> words are new since the column to the left.</div>" + "".join(parts) + "</div>")


def export_round_label(run_ids) -> str:
    """The Export Round field's label names the run whose round it exports."""
    ids = [int(r) for r in run_ids or []]
    return f"Round of run {ids[0]}" if ids else "Round (pick a run to export)"


def picked_runs(saved, store) -> list[int]:
    """The runs picked before a refresh (kept in the browser), those still in the store."""
    known = {r["id"] for r in store.runs()}
    out = []
    for r in saved if isinstance(saved, list) else []:
        try:
            rid = int(r)
        except (TypeError, ValueError):
            continue
        if rid in known and rid not in out:
            out.append(rid)
    return out


def build(lab: Lab, timer: gr.Timer, demo: gr.Blocks, saved: gr.BrowserState) -> None:
    """saved: the picked runs, kept in the browser across a refresh."""
    gr.Markdown("## Results\nPer round: steered (red) against healed (green), with the base model and the "
                "prompting baseline as dashed reference lines. First the method's questions answered from the "
                "run's numbers, then the instruments that work at any model size (the axis score and the offline "
                "incoherence, with 95% intervals), then tinymfv. Charts follow a run while it goes.")
    with gr.Row():
        picked = gr.Dropdown(choices=run_choices(lab.store), multiselect=True, label="Runs", elem_id="results-runs",
                             scale=4)
        refresh = gr.Button("Refresh", elem_id="results-refresh", scale=0, min_width=120)
    warning = gr.HTML(elem_id="results-warning")
    questions = gr.HTML(elem_id="results-questions")
    with gr.Row():
        axis_plot = gr.Plot(label="axis score", elem_id="chart-axis")
        drift_plot = gr.Plot(label="incoherence (offline)", elem_id="chart-drift")
    trait_plot = gr.Plot(label="trait vs incoherence", elem_id="chart-trait-incoherence")
    gr.Markdown("### tinymfv (forced choice)")
    tinymfv_note = gr.HTML(elem_id="results-tinymfv-note")
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
        export_run = gr.Dropdown(choices=[], label="Run to export", elem_id="export-run", scale=1)
        export_round = gr.Number(0, label=export_round_label([]), precision=0, elem_id="export-round", scale=1)
        export_btn = gr.Button("Export adapters + merged model + vector", elem_id="export-btn")
        report_btn = gr.Button("HTML report", elem_id="report-btn")
    export_md = gr.HTML(elem_id="export-status")
    report_file = gr.File(label="Report", elem_id="report-file", visible=False)
    export_job = gr.State(None)
    shown_key = gr.State(None)

    def key_of(run_ids) -> tuple:
        """What the charts depend on: redraw only when it changes (no flicker while polling)."""
        ids = sorted(int(r) for r in run_ids or [])
        markers = tuple(lab.store.change_marker(table, r) for r in ids
                        for table in ("evals", "axis_evals", "drift_evals", "completions"))
        states = tuple((run["status"], run.get("stop_reason")) for run in (lab.store.run(r) for r in ids))
        return tuple(ids), markers, tuple(lab.store.change_marker("probes", r) for r in ids), states

    @friendly
    def draw(run_ids, last_key, force=False):
        key = key_of(run_ids)
        if not force and key == last_key:
            return (gr.skip(),) * 12
        ids = list(key[0])
        if not ids:
            return (None, None, None, None, "<p class='sh-muted'>Pick a run.</p>", "", key, "", None, None, None,
                    "")
        science = (questions_html(lab.store, ids), *instrument_plots(lab.store, ids))
        evals = [e for r in ids for e in lab.store.rows("evals", r)]
        demo = demo_data_note(evals)
        warn = f"<div class='sh-warn' id='demo-data'><b>Demo data:</b> {html.escape(demo)}</div>" if demo else ""
        base = [e for e in evals if e["stage"] == "base"]
        if base and min(e["coherence"] for e in base) < 0.85:
            warn += (f"<div class='sh-warn'><b>Warning:</b> Base coherence is {min(e['coherence'] for e in base):.3f} (under 0.85): "
                    "this model mostly fails the answer format, so its tinymfv numbers are not meaningful. "
                    "Use a larger model for real results.</div>")
        answers = probe_html([p for r in ids for p in lab.store.rows("probes", r)])
        if not evals:
            note = ("<p class='sh-muted'>No tinymfv evals in these runs (tinymfv off: the default on the bundled "
                    "model, which cannot answer its format).</p>")
            return (None, None, None, None, warn, answers, key, *science, note)
        return (charts.metric_per_round(evals, "auth_nats"),
                charts.metric_per_round(evals, "care_nats"),
                charts.incoherence_per_round(evals),
                charts.trajectory(evals),
                warn, answers, key, *science, "")

    outputs = [auth, care, incoherence, path, warning, probes, shown_key, questions, axis_plot, drift_plot,
               trait_plot, tinymfv_note]
    # Not forced: the key holds the picked ids, so a new pick always redraws, while a change event
    # that leaves the pick as it was (a poll refreshing the choices) does not redraw every chart.
    picked.change(draw, [picked, shown_key], outputs)

    def export_choice(run_ids, current):
        """Export names its run: a choice among the picked runs, the Round field labelled with it."""
        ids = [int(r) for r in run_ids or []]
        value = int(current) if current is not None and int(current) in ids else (ids[0] if ids else None)
        return (gr.update(choices=[(f"run {r}", r) for r in ids], value=value),
                gr.update(label=export_round_label([value] if value is not None else [])))

    picked.change(export_choice, [picked, export_run], [export_run, export_round], show_progress="hidden")
    export_run.change(lambda r: gr.update(label=export_round_label([r] if r is not None else [])), export_run,
                      export_round, show_progress="hidden")
    # saved on a person's pick: a BrowserState written from .change re-fires .change (a redraw loop)
    picked.input(lambda r: [int(x) for x in r or []], picked, saved, show_progress="hidden")
    demo.load(lambda before: gr.update(choices=run_choices(lab.store), value=picked_runs(before, lab.store)), saved,
              picked, show_progress="hidden")
    refresh.click(lambda r, k: draw(r, k, True), [picked, shown_key], outputs).then(
        lambda: gr.update(choices=run_choices(lab.store)), None, picked)

    @friendly
    def do_export(run_id, round_):
        if run_id is None:
            raise SteerhealError("Pick a run to export.")
        ids = [int(run_id)]
        round_ = as_int(round_, "Round", 0)
        from steerheal.export import round_adapters

        round_adapters(lab.store, ids[0], round_)  # a clear error now rather than in the worker
        out = lab.data_dir / "exports" / f"run-{ids[0]}-round-{round_}"
        if out.exists() and any(out.iterdir()):
            raise SteerhealError(f"{out} already holds an export of this round.")
        jid = jobs.submit(lab.store, "export", dict(run_id=ids[0], round=round_, out=str(out)), run_id=ids[0])
        return jid, poll_export(jid)

    def poll_export(jid):
        if not jid:
            return gr.skip()
        job = lab.store.job(jid)
        md = job_status_md(job, "export") + (f"<div class='sh-muted'>Run {job['run_id']}, round "
                                              f"{job['params'].get('round')}.</div>")
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

    export_btn.click(do_export, [export_run, export_round], [export_job, export_md])
    report_btn.click(do_report, picked, report_file)

    def tick(run_ids, last_key, jid):
        return (gr.update(choices=run_choices(lab.store)), *draw(run_ids, last_key), poll_export(jid))

    timer.tick(tick, [picked, shown_key, export_job], [picked, *outputs, export_md], show_progress="hidden")
    sweep_section.build_compare(lab, timer)
