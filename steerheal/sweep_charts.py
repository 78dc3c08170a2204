"""A sweep's runs on one chart: trait (axis score) against incoherence per healed round, one
path per run (through its rounds), coloured by the varied setting (seeds of one setting share
a colour)."""

from __future__ import annotations

import altair as alt
import pandas as pd


def trait_vs_incoherence(result: dict) -> alt.Chart:
    """`result`: sweep_compare.compare(...)."""
    rows = [dict(setting=s["label"], run=f"run {r['run_id']} (seed {r['seed']})", round=p["round"],
                 trait=p["trait"], incoherence=p["incoherence"])
            for s in result["settings"] for r in s["runs"] for p in r["per_round"]
            if p["trait"] is not None and p["incoherence"] is not None]
    df = pd.DataFrame(rows, columns=["setting", "run", "round", "trait", "incoherence"])
    base = alt.Chart(df).encode(
        x=alt.X("incoherence:Q", title="incoherence (healed KL rmse to base, nats)", scale=alt.Scale(zero=False)),
        y=alt.Y("trait:Q", title="trait (axis score, healed)", scale=alt.Scale(zero=False)),
        color=alt.Color("setting:N", title="setting"), detail="run:N", order="round:O",
        tooltip=["setting", "run", "round", alt.Tooltip("trait:Q", format="+.3f"),
                 alt.Tooltip("incoherence:Q", format=".3f")])
    return (base.mark_line(opacity=0.6) + base.mark_point(filled=True, size=50)).properties(
        width=520, height=320, title="trait vs incoherence per round, by setting")
