"""Altair charts shared by the pages and the HTML report. Inputs are eval rows as stored:
dicts with run_id, round, stage (base | prompted | steered | healed) and the metrics."""

from __future__ import annotations

from typing import Sequence

import altair as alt
import pandas as pd

STAGE_COLORS = {"steered": "#d62728", "healed": "#2ca02c"}
REFERENCE_STAGES = {"base": "#555555", "prompted": "#1f77b4"}
# Runs differ by point shape (the legend) and line dash; a dash legend alone draws every run as the
# same black dot, so it stays off.
RUN_SHAPE = alt.Shape("run:N", title="run")
RUN_DASH = alt.StrokeDash("run:N", legend=None)
METRIC_TITLES = {"auth_nats": "auth_nats (log p authority; lower = more care over authority)",
                 "care_nats": "care_nats (log p care)", "coherence": "coherence (mass on the 7 answers)"}


def _frame(evals: Sequence[dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(evals))
    if df.empty:
        return pd.DataFrame(columns=["run_id", "round", "stage", "auth_nats", "care_nats", "coherence"])
    df["run"] = "run " + df["run_id"].astype(str)
    return df


def metric_per_round(evals: Sequence[dict], metric: str) -> alt.LayerChart:
    """Steered and healed per round, base and prompting baseline as dashed reference lines."""
    df = _frame(evals)
    rounds = df[df["stage"].isin(STAGE_COLORS)]
    refs = df[df["stage"].isin(REFERENCE_STAGES)]
    color = alt.Color("stage:N", scale=alt.Scale(domain=[*STAGE_COLORS, *REFERENCE_STAGES],
                                                 range=[*STAGE_COLORS.values(), *REFERENCE_STAGES.values()]),
                      title="stage")
    lines = alt.Chart(rounds).mark_line(point=True).encode(
        x=alt.X("round:O", title="round"), y=alt.Y(f"{metric}:Q", title=METRIC_TITLES.get(metric, metric),
                                                   scale=alt.Scale(zero=False)),
        color=color, strokeDash=RUN_DASH, shape=RUN_SHAPE,
        tooltip=["run", "round", "stage", alt.Tooltip(f"{metric}:Q", format=".4f")])
    rules = alt.Chart(refs).mark_rule(strokeDash=[6, 4]).encode(
        y=f"{metric}:Q", color=color, tooltip=["run", "stage", alt.Tooltip(f"{metric}:Q", format=".4f")])
    return (lines + rules).properties(title=f"{metric} per round", width=420, height=260)


def incoherence_per_round(evals: Sequence[dict]) -> alt.LayerChart:
    """1 - coherence on a log scale: steering (red) injects incoherence, heal (green) pulls it back."""
    df = _frame(evals)
    df = df.assign(incoherence=(1 - df["coherence"].astype(float)).clip(lower=1e-4))
    rounds = df[df["stage"].isin(STAGE_COLORS)]
    base = df[df["stage"] == "base"]
    color = alt.Color("stage:N", scale=alt.Scale(domain=list(STAGE_COLORS), range=list(STAGE_COLORS.values())))
    lines = alt.Chart(rounds).mark_line(point=True).encode(
        x=alt.X("round:O", title="round"),
        y=alt.Y("incoherence:Q", scale=alt.Scale(type="log"), title="incoherence = 1 - coherence (log)"),
        color=color, strokeDash=RUN_DASH, shape=RUN_SHAPE,
        tooltip=["run", "round", "stage", alt.Tooltip("incoherence:Q", format=".4f")])
    rule = alt.Chart(base).mark_rule(strokeDash=[6, 4], color=REFERENCE_STAGES["base"]).encode(y="incoherence:Q")
    return (lines + rule).properties(title="Incoherence per round (steered vs healed)", width=420, height=260)


def trajectory(evals: Sequence[dict]) -> alt.LayerChart:
    """Each run in the care_nats vs auth_nats plane: base, then one labelled point per healed round."""
    df = _frame(evals)
    path = df[df["stage"].isin(["base", "healed"])].copy()
    path["order"] = path["round"].fillna(-1).astype(float).where(path["stage"] == "healed", -1)
    path["label"] = path.apply(lambda r: "base" if r["stage"] == "base" else f"r{int(r['round'])}", axis=1)
    base = alt.Chart(path).encode(
        x=alt.X("auth_nats:Q", title="auth_nats (lower = less authority)", scale=alt.Scale(zero=False)),
        y=alt.Y("care_nats:Q", title="care_nats (higher = more care)", scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", title="run"), order="order:Q")
    return (base.mark_line(point=True) + base.mark_text(dy=-9, fontSize=11).encode(text="label:N")).properties(
        title="Trajectory: care vs authority, round by round", width=420, height=300)


def probe_table(probes: Sequence[dict]) -> pd.DataFrame:
    """Rows = probe prompts (the first probe first), columns = rounds, cells = answers."""
    df = pd.DataFrame(list(probes))
    if df.empty:
        return pd.DataFrame()
    order = list(dict.fromkeys(df["prompt"]))
    table = df.pivot_table(index="prompt", columns="round", values="answer", aggfunc="first")
    table.columns = ["base" if c == -1 else f"round {c}" for c in table.columns]
    return table.reindex(order)
