"""Altair charts of the instruments that work at any model size (axis score, offline
incoherence), shared by the Results page and the HTML report. Inputs are rows as stored in
axis_evals / drift_evals (dicts with run_id, round, stage and the numbers); several runs are
told apart by point shape."""

from __future__ import annotations

import json
from typing import Sequence

import altair as alt
import pandas as pd

ROUND_STAGES = {"steered": "#d62728", "healed": "#2ca02c"}
REFERENCE_STAGES = {"base": "#555555", "prompted": "#1f77b4", "random": "#9467bd"}
INCOHERENCE_FLOOR = 1e-3  # the base scores 0 by construction; a log axis shows it at this floor
SHAPE = alt.Shape("run:N", title="run")


def _color(field: str = "stage", legend: bool = True) -> alt.Color:
    """One stage colour scale for every layer (layers share it, so each must use the same domain)."""
    domain = [*ROUND_STAGES, *REFERENCE_STAGES]
    scale = alt.Scale(domain=domain, range=[*ROUND_STAGES.values(), *REFERENCE_STAGES.values()])
    return alt.Color(f"{field}:N", title="stage", scale=scale, **({} if legend else {"legend": None}))


def axis_frame(rows: Sequence[dict]) -> pd.DataFrame:
    df = pd.DataFrame([{k: r.get(k) for k in ("run_id", "round", "stage", "mean", "ci_low", "ci_high", "n",
                                               "share_positive")} for r in rows])
    if df.empty:
        return pd.DataFrame(columns=["run_id", "run", "round", "stage", "mean", "ci_low", "ci_high"])
    df["run"] = "run " + df["run_id"].astype(str)
    return df


def drift_frame(rows: Sequence[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        intervals = json.loads(r["intervals"]) if isinstance(r.get("intervals"), str) else (r.get("intervals") or {})
        band = intervals.get("kl_rmse", {})
        out.append(dict(run_id=r["run_id"], round=r["round"], stage=r["stage"], incoherence=r["headline"],
                        low=band.get("low", r["headline"]), high=band.get("high", r["headline"]),
                        nll_excess=r.get("nll_excess"), repetition=r.get("repetition")))
    df = pd.DataFrame(out)
    if df.empty:
        return pd.DataFrame(columns=["run_id", "run", "round", "stage", "incoherence", "low", "high", "shown"])
    df["run"] = "run " + df["run_id"].astype(str)
    for col in ("incoherence", "low", "high"):
        df[f"{col}_shown"] = df[col].astype(float).clip(lower=INCOHERENCE_FLOOR)
    return df


def _per_round(df: pd.DataFrame, y: str, low: str, high: str, title: str, y_title: str,
               scale: alt.Scale) -> alt.LayerChart:
    rounds = df[df["stage"].isin(ROUND_STAGES)]
    refs = df[df["stage"].isin(REFERENCE_STAGES)]
    x = alt.X("round:O", title="round")
    tip = ["run", "round", "stage", alt.Tooltip(f"{y}:Q", format=".4f"), alt.Tooltip(f"{low}:Q", format=".4f"),
           alt.Tooltip(f"{high}:Q", format=".4f")]
    line = alt.Chart(rounds).mark_line(point=alt.OverlayMarkDef(size=60, filled=True)).encode(
        x=x, y=alt.Y(f"{y}:Q", title=y_title, scale=scale), color=_color(), shape=SHAPE,
        detail="run:N", tooltip=tip)
    bars = alt.Chart(rounds).mark_errorbar(thickness=1.5).encode(
        x=x, y=alt.Y(f"{low}:Q", title=y_title, scale=scale), y2=f"{high}:Q", color=_color(), detail="run:N")
    band = alt.Chart(refs).mark_rect(fillOpacity=0.12, strokeOpacity=0).encode(y=f"{low}:Q", y2=f"{high}:Q",
                                                                              color=_color())
    rule = alt.Chart(refs).mark_rule(strokeDash=[6, 4]).encode(y=f"{y}:Q", color=_color(), tooltip=tip)
    return (band + rule + bars + line).properties(title=title, width=420, height=260)


def axis_per_round(rows: Sequence[dict]) -> alt.LayerChart:
    """Axis score per round: steered red, healed green, with 95% intervals; base, prompting
    baseline and random vector as dashed lines with their interval shaded."""
    return _per_round(axis_frame(rows), "mean", "ci_low", "ci_high", "Axis score per round (95% intervals)",
                      "axis score (log p pos - log p neg; up = trait)", alt.Scale(zero=False))


def incoherence_per_round(rows: Sequence[dict]) -> alt.LayerChart:
    """Headline incoherence (KL rmse to base on neutral prompts) per round, log scale."""
    return _per_round(drift_frame(rows), "incoherence_shown", "low_shown", "high_shown",
                      "Incoherence per round (KL rmse to base, log; 95% intervals)",
                      "incoherence (nats, log; base = 0 shown at 0.001)", alt.Scale(type="log"))


def trait_vs_incoherence(axis_rows: Sequence[dict], drift_rows: Sequence[dict]) -> alt.LayerChart:
    """Each stage as a point in the (incoherence, axis score) plane: the path from base through
    the healed rounds (green) and the steered rounds (red); a good heal keeps the trait (up)
    without the incoherence (left)."""
    a, d = axis_frame(axis_rows), drift_frame(drift_rows)
    if a.empty or d.empty:
        df = pd.DataFrame(columns=["run", "round", "stage", "mean", "incoherence_shown", "label", "path", "order"])
    else:
        df = a.merge(d[["run_id", "round", "stage", "incoherence_shown", "incoherence"]],
                     on=["run_id", "round", "stage"])
    rows = []
    for _, r in df.iterrows():
        label = r["stage"] if r["round"] < 0 else f"{r['stage'][0]}{int(r['round'])}"
        if r["stage"] in ROUND_STAGES:
            rows.append({**r, "label": label, "path": f"{r['run']} {r['stage']}", "order": r["round"]})
        elif r["stage"] == "base":  # every path starts at the base
            for stage in ROUND_STAGES:
                rows.append({**r, "label": "base", "path": f"{r['run']} {stage}", "order": -1, "stage_path": stage})
        else:
            rows.append({**r, "label": r["stage"], "path": f"{r['run']} {r['stage']}", "order": r["round"]})
    frame = pd.DataFrame(rows) if rows else df
    if "stage_path" in frame:
        frame["line_stage"] = frame["stage_path"].fillna(frame["stage"])
    else:
        frame["line_stage"] = frame.get("stage", pd.Series(dtype=str))
    enc = dict(x=alt.X("incoherence_shown:Q", title="incoherence (KL rmse to base, log)", scale=alt.Scale(type="log")),
               y=alt.Y("mean:Q", title="axis score (up = trait)", scale=alt.Scale(zero=False)))
    lines = alt.Chart(frame[frame["line_stage"].isin(ROUND_STAGES)] if not frame.empty else frame).mark_line(
        strokeOpacity=0.5).encode(**enc, detail="path:N", order="order:Q", color=_color("line_stage"))
    points = alt.Chart(frame).mark_point(filled=True, size=70).encode(
        **enc, color=_color(), shape=SHAPE,
        tooltip=["run", "stage", "round", alt.Tooltip("mean:Q", format=".4f"), alt.Tooltip("incoherence:Q", format=".4f")])
    text = alt.Chart(frame).mark_text(dy=-10, fontSize=11).encode(**enc, text="label:N")
    return (lines + points + text).properties(title="Trait vs incoherence, stage by stage", width=420, height=300)
