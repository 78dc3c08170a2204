"""One self-contained HTML page per run (or several runs): the charts, the probe answers per
round and the config, readable offline (the Vega libraries are inlined)."""

from __future__ import annotations

import html
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import altair as alt

from steerheal import charts, instrument_charts
from steerheal.errors import SteerhealError
from steerheal.evals.tinymfv_data import demo_data_note
from steerheal.store import Store
from steerheal.summary import run_summary

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1d2430; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { border: 1px solid #d8dde6; padding: .4rem .5rem; vertical-align: top; text-align: left; }
th { background: #f3f5f9; } .muted { color: #6b7585; } .warn { color: #a33; }
pre { background: #f7f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }
"""


def _row(*charts_: alt.TopLevelMixin) -> alt.HConcatChart:
    # Each chart keeps its own colour and shape scales: a shared scale with one chart's explicit
    # stage domain (steered/healed) leaves another chart's run-coloured points without a colour,
    # i.e. invisible (the report's trajectory drew axes and no points).
    return alt.hconcat(*charts_).resolve_scale(color="independent", shape="independent")


def run_charts(evals: Sequence[dict]) -> alt.VConcatChart:
    top = _row(charts.metric_per_round(evals, "auth_nats"), charts.metric_per_round(evals, "care_nats"))
    bottom = _row(charts.incoherence_per_round(evals), charts.trajectory(evals))
    return alt.vconcat(top, bottom).resolve_scale(color="independent", shape="independent")


def instrument_chart(axis: Sequence[dict], drift: Sequence[dict]) -> alt.VConcatChart:
    top = _row(instrument_charts.axis_per_round(axis), instrument_charts.incoherence_per_round(drift))
    return alt.vconcat(top, instrument_charts.trait_vs_incoherence(axis, drift)).resolve_scale(
        color="independent", shape="independent")


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _stage_table(summary: dict) -> str:
    head = ("<tr><th>round</th><th>stage</th><th>axis score [95%]</th><th>share &gt; 0</th><th>incoherence "
            "(KL rmse)</th><th>base NLL excess</th><th>repetition</th><th>tinymfv coherence</th></tr>")
    body = "".join(
        f"<tr><td>{'base' if r['round'] == -1 else r['round']}</td><td>{r['stage']}</td>"
        f"<td>{_fmt(r['axis'], '+.3f')} [{_fmt(r['axis_low'], '+.3f')}, {_fmt(r['axis_high'], '+.3f')}]</td>"
        f"<td>{_fmt(r['axis_share_positive'], '.0%')}</td><td>{_fmt(r['incoherence'])}</td>"
        f"<td>{_fmt(r['nll_excess'], '+.3f')}</td><td>{_fmt(r['repetition'])}</td>"
        f"<td>{_fmt(r['tinymfv_coherence'])}</td></tr>" for r in summary["table"])
    return f"<table>{head}{body}</table>"


def _questions_html(summary: dict) -> str:
    colour = {"yes": "#1a7f37", "no": "#a33", "unclear": "#6b7585"}
    rows = "".join(
        f"<tr><td>{html.escape(q['question'])}</td><td style='color:{colour[q['verdict']]}'><b>{q['verdict']}</b>"
        f"</td><td>{html.escape(q['because'])}</td><td class='muted'>{html.escape(q['rule'])}</td></tr>"
        for q in summary["questions"])
    return ("<table><tr><th>question</th><th>verdict</th><th>figures (95% bootstrap intervals)</th><th>rule</th></tr>"
            f"{rows}</table>")


def _chart_html(chart: alt.TopLevelMixin, height: int = 720) -> str:
    """The chart as its own small page with the Vega JavaScript inlined (no network needed),
    framed so its scripts and styles stay apart from the report's."""
    page = chart.to_html(inline=True)
    return (f"<iframe title='charts' style='width:100%;height:{height}px;border:0' "
            f"srcdoc=\"{html.escape(page, quote=True)}\"></iframe>")


def _eval_table(evals: Sequence[dict]) -> str:
    head = "<tr><th>run</th><th>round</th><th>stage</th><th>auth_nats</th><th>care_nats</th>" \
           "<th>coherence</th><th>top1_acc</th></tr>"
    body = "".join(
        f"<tr><td>{e['run_id']}</td><td>{'base' if e['round'] == -1 else e['round']}</td><td>{e['stage']}</td>"
        f"<td>{e['auth_nats']:.4f}</td><td>{e['care_nats']:.4f}</td><td>{e['coherence']:.4f}</td>"
        f"<td>{e['top1_acc']:.4f}</td></tr>" for e in evals)
    return f"<table>{head}{body}</table>"


def _probe_html(probes: Sequence[dict]) -> str:
    table = charts.probe_table(probes)
    if table.empty:
        return "<p class='muted'>No probe answers yet.</p>"
    head = "<tr><th>probe</th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns) + "</tr>"
    body = "".join("<tr><th>" + html.escape(str(prompt)) + "</th>" + "".join(
        f"<td>{html.escape(str(v)) if isinstance(v, str) else ''}</td>" for v in row) + "</tr>"
        for prompt, row in table.iterrows())
    return f"<table>{head}{body}</table>"


def build_report(store: Store, run_ids: Sequence[int]) -> str:
    runs = [store.run(r) for r in run_ids]
    evals = [e for r in run_ids for e in store.rows("evals", r)]
    probes = [p for p in store.rows("probes", run_ids[0])]
    parts = [f"<h1>steerheal report: run{'s' if len(runs) > 1 else ''} {', '.join(map(str, run_ids))}</h1>"]
    for run in runs:
        parts.append(f"<p class='muted'>run {run['id']}: model <b>{html.escape(run['model_id'])}</b>, seed "
                     f"{run['seed']}, status <b>{run['status']}</b>, stage {html.escape(str(run['stage']))}, "
                     f"git {html.escape(str(run['git_commit'])[:10])}</p>")
        if run.get("error"):
            parts.append(f"<p class='warn'>error: {html.escape(run['error'])}</p>")
    demo = demo_data_note(evals)
    if demo:
        parts.append(f"<p class='warn' id='demo-data'><b>Demo data:</b> {html.escape(demo)}</p>")
    base = [e for e in evals if e["stage"] == "base"]
    if base and base[0]["coherence"] < 0.85:
        parts.append(f"<p class='warn'>Base coherence is {base[0]['coherence']:.3f} (&lt; 0.85): the model mostly "
                     "fails the answer format, so the tinymfv numbers are not meaningful for it.</p>")
    for run in runs:
        if run.get("stop_reason"):
            parts.append(f"<p class='warn' id='stopped-early'>Run {run['id']} {html.escape(run['stop_reason'])}</p>")
    summaries = {r: run_summary(store, r) for r in run_ids}
    for run_id, summary in summaries.items():
        parts.append(f"<h2>The method's questions (run {run_id})</h2>" + _questions_html(summary))
    axis = [a for r in run_ids for a in store.rows("axis_evals", r)]
    drift = [d for r in run_ids for d in store.rows("drift_evals", r)]
    parts.append("<h2>Trait and incoherence per round (axis eval, offline incoherence)</h2>")
    parts.append(_chart_html(instrument_chart(axis, drift)) if axis or drift
                 else "<p class='muted'>No axis or incoherence evals yet.</p>")
    for run_id, summary in summaries.items():
        parts.append(f"<h3>Per stage (run {run_id})</h3>" + _stage_table(summary))
    parts.append("<h2>tinymfv per round</h2>")
    parts.append(_chart_html(run_charts(evals)) if evals else "<p class='muted'>No tinymfv evals in "
                 "this run (tinymfv off).</p>")
    if evals:
        parts.append("<h2>tinymfv metrics</h2>" + _eval_table(evals))
    parts.append(f"<h2>Probe answers per round (run {run_ids[0]})</h2>" + _probe_html(probes))
    for run in runs:
        parts.append(f"<h2>Config of run {run['id']}</h2><pre>{html.escape(json.dumps(run['config'], indent=2))}</pre>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>steerheal report</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")


def write_report(store: Store, run_ids: Sequence[int], out: str | os.PathLike) -> Path:
    if not run_ids:
        raise SteerhealError("Name at least one run for the report.")
    page = build_report(store, run_ids)
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=out.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, out)
    return out
