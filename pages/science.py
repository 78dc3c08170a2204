"""What the Results and Heal pages show of the instruments that work at any model size: the
method's questions with their verdicts, why a run stopped early, the axis / incoherence charts,
and whether a persona pair has axis items."""

from __future__ import annotations

import html

from steerheal import instrument_charts
from steerheal.errors import SteerhealError
from steerheal.evals.axis import has_bundled_items, load_items
from steerheal.store import Store
from steerheal.summary import outcome, run_summary

VERDICT_COLOUR = {"yes": "#15803d", "no": "#b91c1c", "unclear": "#6b7280"}
_CELL = "style='border:1px solid var(--border-color-primary);padding:.35rem .5rem;vertical-align:top'"


def stop_note(run: dict) -> str:
    """'' or one line saying the run stopped early and why (never a bare 'completed')."""
    if not run.get("stop_reason"):
        return ""
    return (f"<div class='sh-warn' id='stopped-early-{run['id']}'><b>Run {run['id']} {html.escape(outcome(run))}:"
            f"</b> {html.escape(run['stop_reason'])}</div>")


def calibration_note(calibrations: list[dict]) -> str:
    """'' or the strengths each round calibrated (alphas = "auto"): alpha, the measure at it, the
    target and the evaluations it took."""
    if not calibrations:
        return ""
    lines = []
    for c in calibrations:
        what = "p95 per-token KL" if c["kind"] == "kl" else "kept share"
        lines.append(f"round {c['round']}: α {c['alpha']:.3g} ({what} {c['measure']:.3g}, target {c['target']:g}, "
                     f"{c['evaluations']} evaluations{'' if c['reached'] else ', not reached'}) → strengths "
                     + ", ".join(f"{a:g}" for a in c["alphas"]))
    return "<div class='sh-muted' data-calibrations='{}'><b>Calibrated strengths:</b> {}</div>".format(
        len(calibrations), html.escape("; ".join(lines)))


def questions_html(store: Store, run_ids: list[int]) -> str:
    """Per picked run: each question, its verdict, the figures with intervals, the rule on hover."""
    parts = []
    for run_id in run_ids:
        summary = run_summary(store, run_id)
        run = store.run(run_id)
        rows = "".join(
            f"<tr><td {_CELL}>{html.escape(q['question'])}</td>"
            f"<td {_CELL} data-verdict='{q['verdict']}'><b style='color:{VERDICT_COLOUR[q['verdict']]}'>"
            f"{q['verdict']}</b></td>"
            f"<td {_CELL} title='{html.escape(q['rule'], quote=True)}'>{html.escape(q['because'])}</td></tr>"
            for q in summary["questions"])
        parts.append(f"<div id='questions-run-{run_id}' style='margin-bottom:.75rem'>{stop_note(run)}"
                     f"<b>Run {run_id}</b> ({html.escape(summary['status'])}, {summary['rounds_completed']} of "
                     f"{summary['rounds_asked']} rounds)<table style='border-collapse:collapse;width:100%'><tr>"
                     f"<th {_CELL}>question</th><th {_CELL}>verdict</th><th {_CELL}>figures (95% bootstrap "
                     f"intervals; the rule on hover)</th></tr>{rows}</table>"
                     f"{calibration_note(summary['calibrations'])}</div>")
    return "".join(parts)


def instrument_plots(store: Store, run_ids: list[int]):
    """(axis per round, incoherence per round, trait vs incoherence), or Nones when nothing is measured."""
    axis = [a for r in run_ids for a in store.rows("axis_evals", r)]
    drift = [d for r in run_ids for d in store.rows("drift_evals", r)]
    if not axis and not drift:
        return None, None, None
    return (instrument_charts.axis_per_round(axis) if axis else None,
            instrument_charts.incoherence_per_round(drift) if drift else None,
            instrument_charts.trait_vs_incoherence(axis, drift) if axis and drift else None)


def items_note(pair_name: str, custom: bool, items_file: str | None) -> str:
    """Whether the pair has axis items (the trait score needs them), checking a given file."""
    if items_file:
        try:
            items = load_items(items_file)
        except SteerhealError as err:
            return f"<div class='sh-error' id='items-note'>{html.escape(str(err))}</div>"
        split = sum(i.split == "eval" for i in items)
        return (f"<div class='sh-ok' id='items-note'>Axis items: {len(items)} from {html.escape(items_file)} "
                f"({split} held-out eval items score each stage).</div>")
    if not custom and has_bundled_items(pair_name):
        return (f"<div class='sh-muted' id='items-note'>Axis items: the bundled set for {html.escape(pair_name)} "
                "(held-out eval split) scores the trait at every stage.</div>")
    return ("<div class='sh-warn' id='items-note'>This pair has no axis items, so runs measure incoherence but no "
            "trait score. Give a JSONL items file (one {\"prompt\", \"pos\", \"neg\"} per line).</div>")
