"""Sweeps in the app: on the Heal page, start a sweep from the form's settings plus axes to vary
(or the seed-table preset), follow its runs, cancel or resume it; on Results, compare a whole
sweep per setting with intervals over seeds and a trait-vs-incoherence chart."""

from __future__ import annotations

import html
import logging
import math
import subprocess
import sys
from typing import Callable

import gradio as gr

from pages.common import Lab, error_html
from steerheal import sweeps
from steerheal.errors import SteerhealError
from steerheal.run_config import RunConfig
from steerheal.sweep_charts import trait_vs_incoherence
from steerheal.sweep_compare import compare, run_headline, seed_list
from steerheal.sweep_presets import preset
from steerheal.sweep_spec import SweepSpec, axes_from_text

log = logging.getLogger("steerheal.app")
BACKEND_CHOICES = [("local: the app's workers", "local"), ("Ray: RAY_ADDRESS, else a local cluster", "ray")]


def sweep_choices(store) -> list[tuple[str, int]]:
    out = []
    for s in reversed(sweeps.sweeps(store)):
        out.append((f"sweep {s['id']} · {s['state']['status']} · {s['state']['total']} runs"
                    + (f" · {s['name']}" if s["name"] else ""), s["id"]))
    return out


def _num(value, signed: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def runs_html(store, sweep_id: int | None) -> str:
    """The sweep's runs: setting, status, where it is, and its last healed trait and incoherence."""
    if sweep_id is None:
        return "<span class='sh-muted'>No sweep selected.</span>"
    info = sweeps.sweep(store, int(sweep_id))
    state = info["state"]
    counts = ", ".join(f"{n} {k}" for k, n in sorted(state["counts"].items()))
    head = (f"<div class='sh-job' id='sweep-state' data-status='{state['status']}'><b>sweep {info['id']}</b> "
            f"<span class='sh-badge sh-{state['status']}'>{state['status']}</span> · {info['backend']} · "
            f"{html.escape(counts)}</div>")
    rows = []
    for run in sweeps.sweep_runs(store, int(sweep_id)):
        h = run_headline(store, run["id"])
        rows.append(f"<tr data-run='{run['id']}' data-status='{run['status']}'><td>{run['id']}</td>"
                    f"<td>{html.escape(run['label'])}</td><td><span class='sh-badge sh-{run['status']}'>"
                    f"{run['status']}</span></td><td>{html.escape(str(run['stage'] or ''))}</td>"
                    f"<td>{h['rounds']}</td><td>{_num(h['trait_end'])}</td>"
                    f"<td>{_num(h['incoherence_end'], False)}</td></tr>")
    table = ("<table class='sh-table' id='sweep-runs-table'><tr><th>run</th><th>setting</th><th>status</th>"
             "<th>stage</th><th>rounds</th><th>trait (last healed)</th><th>incoherence</th></tr>"
             + "".join(rows) + "</table>")
    return head + table


def _iv(iv: dict, signed: bool = True) -> str:
    if iv["n"] == 0:
        return "–"
    text = _num(iv["value"], signed)
    return text if iv["n"] < 2 else f"{text} <span class='sh-muted'>[{_num(iv['low'], signed)}, " \
                                    f"{_num(iv['high'], signed)}]</span>"


def compare_html(result: dict) -> str:
    rows = [f"<tr><td>{html.escape(s['label'])}</td><td>{s['n_done']}/{s['n_runs']}</td>"
            f"<td>{_iv(s['trait_start'])} → {_iv(s['trait_end'])}</td><td>{_iv(s['trait_change'])}</td>"
            f"<td>{_iv(s['incoherence_start'], False)} → {_iv(s['incoherence_end'], False)}</td>"
            f"<td>{html.escape(s['outcome'])}</td></tr>" for s in result["settings"]]
    return ("<table class='sh-table' id='sweep-compare-table'><tr><th>setting</th><th>seeds done</th>"
            "<th>trait, first → last healed round</th><th>trait change</th><th>incoherence over the loop</th>"
            "<th>outcome</th></tr>" + "".join(rows) + "</table><div class='sh-muted'>Brackets: 95% t intervals "
            "over the setting's seeds (a single seed has none). Trait: axis score; incoherence: healed KL rmse to "
            "base.</div>" + versus_html(result.get("versus", [])))


def versus_html(versus: list[dict]) -> str:
    """Each setting minus the first, paired by seed: the comparison the method asks for."""
    if not versus:
        return ""
    items = "".join(
        f"<li><b>{html.escape(v['label'])}</b> minus <b>{html.escape(v['against'])}</b>, paired over "
        f"{seed_list(v['seeds']) if v['seeds'] else 'no seed finished under both'}: trait at the last round "
        f"{_iv(v['trait_end'])}, incoherence at the last round {_iv(v['incoherence_end'])}</li>" for v in versus)
    return f"<ul id='sweep-versus'>{items}</ul>"


def start_ray_driver(lab: Lab, sweep_id: int) -> None:
    """The Ray driver must own its process's main thread: it runs as `steerheal sweep --resume`."""
    logfile = open(lab.store.lab_dir() / f"sweep-{sweep_id}-ray.log", "ab")
    subprocess.Popen([sys.executable, "-m", "steerheal.cli", "sweep", "--resume", str(sweep_id), "--backend", "ray",
                      "--db", str(lab.store.path)], stdout=logfile, stderr=logfile, start_new_session=True)


def check_ray() -> None:
    from steerheal.sweeps_ray import _reachable, import_ray

    import_ray()
    import os

    address = os.environ.get("RAY_ADDRESS")
    if address:
        _reachable(address)


def launch(lab: Lab, sweep_id: int, backend: str) -> None:
    if backend == "ray":
        start_ray_driver(lab, sweep_id)
    else:
        from steerheal.sweeps_local import submit_runs

        submit_runs(lab.store, sweep_id)


def build(lab: Lab, timer: gr.Timer, fields: list, config_from_form: Callable[..., RunConfig]) -> dict:
    """The Heal page's Sweep section. `config_from_form(*values)` turns the form's values into
    the base run config."""
    with gr.Accordion("Sweep: many runs over settings and seeds", open=False, elem_id="sweep-section"):
        gr.Markdown("The form above is the base run; each line below varies one setting (`name = v1, v2`, e.g. "
                    "`agg = mean, rmse` and `seed = 1, 2, 3`): every combination is one run. Results compares a "
                    "finished sweep per setting, with intervals over seeds.")
        with gr.Row():
            axes = gr.Textbox("agg = mean, rmse\nseed = 1, 2, 3", lines=3, label="Axes", elem_id="sweep-axes", scale=3)
            with gr.Column(scale=2):
                backend = gr.Radio(BACKEND_CHOICES, value="local", label="Backend", elem_id="sweep-backend")
                max_parallel = gr.Number(0, label="Ray: runs at once (0 = one per GPU / CPU)", precision=0,
                                         elem_id="sweep-max-parallel")
        with gr.Row():
            start = gr.Button("Start sweep", variant="primary", elem_id="start-sweep-btn", scale=0, min_width=160)
            seed_table = gr.Button("Seed table (mean vs rmse, 3 seeds)", elem_id="seed-table-btn", scale=0,
                                   min_width=260)
            start_md = gr.HTML(elem_id="start-sweep-status")
        with gr.Row():
            which = gr.Dropdown(choices=sweep_choices(lab.store), label="Sweep", elem_id="sweep-pick", scale=3)
            cancel = gr.Button("Cancel sweep", variant="stop", elem_id="cancel-sweep-btn", scale=0, min_width=140)
            resume = gr.Button("Resume sweep", elem_id="resume-sweep-btn", scale=0, min_width=140)
        table = gr.HTML(elem_id="sweep-runs")

    def create(spec: SweepSpec, backend_v: str, max_par, preset_name: str | None):
        if backend_v == "ray":
            check_ray()
        par = int(max_par) if max_par else None
        sweep_id, run_ids = sweeps.create_sweep(lab.store, spec, backend_v, max_parallel=par, preset=preset_name)
        launch(lab, sweep_id, backend_v)
        note = (f"<span class='sh-muted'>Sweep <b>{sweep_id}</b>: {len(run_ids)} runs queued "
                f"({'the app’s workers run them one at a time' if backend_v == 'local' else 'on Ray'}).</span>")
        return note, gr.update(choices=sweep_choices(lab.store), value=sweep_id), runs_html(lab.store, sweep_id)

    def guarded(make_spec):
        def handler(axes_v, backend_v, max_par, *values):
            try:
                spec, name = make_spec(axes_v, values)
                return create(spec, backend_v, max_par, name)
            except Exception as err:  # noqa: BLE001 - every refusal goes beside the buttons
                if isinstance(err, (SteerhealError, gr.Error)):
                    message = getattr(err, "message", None) or str(err)
                else:
                    log.exception("unexpected error starting a sweep")
                    message = f"Something went wrong ({type(err).__name__}: {err}). The details are in the server log."
                return error_html("Not started", message), gr.skip(), gr.skip()
        return handler

    def from_form(axes_v, values):
        base = config_from_form(*values)
        return SweepSpec(base=base.to_dict(), axes=axes_from_text(axes_v), name="from the Heal form"), None

    def from_preset(axes_v, values):
        return preset("seed-table"), "seed-table"

    inputs = [axes, backend, max_parallel, *fields]
    start.click(guarded(from_form), inputs, [start_md, which, table])
    seed_table.click(guarded(from_preset), inputs, [start_md, which, table])

    def act(kind):
        def handler(sweep_id):
            if sweep_id is None:
                return error_html("Nothing done", "Pick a sweep."), gr.skip()
            sid = int(sweep_id)
            try:
                if kind == "cancel":
                    sweeps.request_cancel(lab.store, sid)
                    note = "<span class='sh-muted'>Cancel requested: queued runs are cancelled, running ones stop " \
                           "at their next check; finished runs are kept.</span>"
                else:
                    info = sweeps.sweep(lab.store, sid)
                    if info["backend"] == "ray":
                        check_ray()
                    else:
                        sweeps.reopen(lab.store, sid)
                    launch(lab, sid, info["backend"])
                    note = "<span class='sh-muted'>Resumed: finished runs are kept, the others go on.</span>"
            except SteerhealError as err:
                return error_html("Not done", str(err)), gr.skip()
            return note, runs_html(lab.store, sid)
        return handler

    cancel.click(act("cancel"), which, [start_md, table])
    resume.click(act("resume"), which, [start_md, table])
    which.change(lambda s: runs_html(lab.store, s), which, table, show_progress="hidden")
    shown = gr.State(None)

    def tick(sweep_id, last):
        """Redraw the runs table only when the sweep changed (a stage, a status, a stored result)."""
        key = None if sweep_id is None else sweeps.change_marker(lab.store, int(sweep_id))
        table_u = gr.skip() if key == last and key is not None else runs_html(lab.store, sweep_id)
        return gr.update(choices=sweep_choices(lab.store)), table_u, key

    timer.tick(tick, [which, shown], [which, table, shown], show_progress="hidden")
    return dict(sweep=which)


def build_compare(lab: Lab, timer: gr.Timer) -> None:
    """Results' sweep comparison: pick a sweep, see each setting with intervals over seeds and
    every run's path of trait against incoherence."""
    gr.Markdown("### Compare a sweep")
    which = gr.Dropdown(choices=sweep_choices(lab.store), label="Sweep", elem_id="results-sweep")
    table = gr.HTML(elem_id="results-sweep-table")
    chart = gr.Plot(label="trait vs incoherence by setting", elem_id="chart-sweep")
    shown = gr.State(None)

    def draw(sweep_id, last):
        if sweep_id is None:
            return gr.skip(), gr.skip(), last
        key = sweeps.change_marker(lab.store, int(sweep_id))
        if key == last:
            return gr.skip(), gr.skip(), last
        result = compare(lab.store, int(sweep_id))
        return compare_html(result), trait_vs_incoherence(result), key

    which.change(draw, [which, shown], [table, chart, shown], show_progress="hidden")

    def tick(sweep_id, last):
        return gr.update(choices=sweep_choices(lab.store)), *draw(sweep_id, last)

    timer.tick(tick, [which, shown], [which, table, chart, shown], show_progress="hidden")
