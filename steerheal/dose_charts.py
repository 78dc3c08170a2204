"""The dose curve as one Altair chart: four panels over alpha (per-token KL to base, share of
completions kept, axis score, offline incoherence), the chosen alpha marked in each, the target
drawn in its own panel. Works on a partial curve (points arrive one by one)."""

from __future__ import annotations

from typing import Sequence

import altair as alt
import pandas as pd

WIDTH, HEIGHT = 380, 170
CHOSEN_COLOR = "#d62728"


def dose_frame(points: Sequence[dict]) -> pd.DataFrame:
    rows = []
    for p in points:
        kind = "grid" if p.get("grid", True) else "calibration"
        rows.append(dict(alpha=p["alpha"], measure="KL p95 (nats)", value=p["kl_p95"], low=None, high=None, kind=kind))
        rows.append(dict(alpha=p["alpha"], measure="KL mean (nats)", value=p["kl_mean"], low=None, high=None,
                         kind=kind))
        rows.append(dict(alpha=p["alpha"], measure="kept share", value=p["kept_share"], low=None, high=None,
                         kind=kind))
        if p.get("axis"):
            a = p["axis"]
            rows.append(dict(alpha=p["alpha"], measure="axis score", value=a["mean"], low=a["ci_low"],
                             high=a["ci_high"], kind=kind))
        if p.get("incoherence"):
            i = p["incoherence"]
            rows.append(dict(alpha=p["alpha"], measure="incoherence", value=i["value"], low=i.get("low"),
                             high=i.get("high"), kind=kind))
    return pd.DataFrame(rows, columns=["alpha", "measure", "value", "low", "high", "kind"])


def _panel(df: pd.DataFrame, measures: list[str], title: str, y_title: str, chosen: float | None,
           target: float | None) -> alt.LayerChart:
    data = df[df["measure"].isin(measures)]
    x = alt.X("alpha:Q", title="strength α")
    tip = ["measure", alt.Tooltip("alpha:Q", format=".3g"), alt.Tooltip("value:Q", format=".4f"), "kind"]
    color = alt.Color("measure:N", title=None, scale=alt.Scale(domain=measures),
                      legend=alt.Legend(orient="top") if len(measures) > 1 else None)
    grid = data[data["kind"] == "grid"]
    layers = [alt.Chart(grid).mark_line(point=alt.OverlayMarkDef(size=50, filled=True)).encode(
        x=x, y=alt.Y("value:Q", title=y_title), color=color, tooltip=tip)]
    extra = data[data["kind"] == "calibration"]
    if not extra.empty:
        layers.append(alt.Chart(extra).mark_point(shape="diamond", size=80, filled=True).encode(
            x=x, y="value:Q", color=color, tooltip=tip))
    banded = data.dropna(subset=["low", "high"])
    if not banded.empty:
        layers.append(alt.Chart(banded).mark_errorbar().encode(x=x, y=alt.Y("low:Q", title=y_title), y2="high:Q",
                                                               color=color))
    if chosen is not None:
        layers.append(alt.Chart(pd.DataFrame({"alpha": [chosen]})).mark_rule(color=CHOSEN_COLOR, strokeWidth=2).encode(
            x="alpha:Q", tooltip=[alt.Tooltip("alpha:Q", title="chosen α", format=".4g")]))
    if target is not None:
        layers.append(alt.Chart(pd.DataFrame({"target": [target]})).mark_rule(strokeDash=[4, 4], color="#777").encode(
            y="target:Q", tooltip=[alt.Tooltip("target:Q", title="target")]))
    return alt.layer(*layers).properties(title=title, width=WIDTH, height=HEIGHT)


def dose_chart(points: Sequence[dict], chosen_alpha: float | None = None, target: dict | None = None
               ) -> alt.VConcatChart | None:
    """target: {"kind": "kl" | "kept", "value": v} drawn as a dashed line in its panel."""
    df = dose_frame(points)
    if df.empty:
        return None
    kind = (target or {}).get("kind")
    value = (target or {}).get("value")
    kl = _panel(df, ["KL p95 (nats)", "KL mean (nats)"], "Per-token KL(steered || base) on its own tokens", "nats",
                chosen_alpha, value if kind == "kl" else None)
    kept = _panel(df, ["kept share"], "Share of completions the filters keep", "share", chosen_alpha,
                  value if kind == "kept" else None)
    axis = _panel(df, ["axis score"], "Axis score (dev items, 95% interval)", "log-prob gap", chosen_alpha, None)
    inc = _panel(df, ["incoherence"], "Offline incoherence (KL rmse, neutral prompts)", "nats", chosen_alpha, None)
    title = "Dose curve" + (f": the chosen α = {chosen_alpha:.4g} in red" if chosen_alpha is not None else "")
    return alt.vconcat(alt.hconcat(kl, kept), alt.hconcat(axis, inc)).properties(title=title).resolve_scale(
        color="independent")
