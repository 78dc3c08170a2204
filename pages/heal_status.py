"""Heal's progress in words and pictures: the loop's stages, the line beside Start run, the
training curves."""

from __future__ import annotations

import html
import re

import altair as alt
import pandas as pd

RESUMABLE = ("interrupted", "cancelled", "failed")
BUSY = ("queued", "running")

# The loop's stages (run stage "round N: <name>[ k/n]" and job progress "<name>") in words.
STAGE_WORDS = {
    "created": "starting",
    "vector": "extracting the steering vector",
    "calibrate": "calibrating the strength to its target",
    "generate": "generating completions",
    "filter": "scoring and filtering completions",
    "heal": "training the LoRA",
    "heal step": "training the LoRA, step",
    "bake": "saving the adapter",
    "eval base": "evaluating the base model",
    "eval prompted": "evaluating the prompted baseline",
    "eval random control": "evaluating the random-vector control",
    "eval steered": "evaluating the steered model",
    "eval healed": "evaluating the healed model",
    "probes": "answering the probe questions",
    "waiting": "waiting for curation",
    "waiting for curation": "waiting for curation",
    "stopped early": "stopped early (coherence fell below the floor)",
    "done": "done",
}
_STAGE = re.compile(r"^(?P<round>round -?\d+: )?(?P<name>.*?)(?: (?P<done>\d+)/(?P<total>\d+))?$")


def stage_parts(stage: str | None) -> tuple[str, int | None, int | None]:
    """A run or job stage as (words, done, total): "round 0: heal step 3/6" ->
    ("round 0: training the LoRA, step 3/6", 3, 6); "round 0: vector" -> ("round 0: extracting the
    steering vector", None, None)."""
    m = _STAGE.match(str(stage or "").strip())
    name = m["name"]
    words = (m["round"] or "") + STAGE_WORDS.get(name, name)
    if m["done"] is None:
        return words, None, None
    return f"{words} {m['done']}/{m['total']}", int(m["done"]), int(m["total"])


def start_note_md(run: dict, job: dict | None) -> str:
    """The line beside Start run for the run it started, following that run: queued, running
    (with its stage), then how it ended."""
    rid, what = run["id"], f" (job {job['id']})" if job else ""
    if job and job["status"] == "queued":
        return f"Run **{rid}** queued{what}: waiting for a worker."
    if job and job["status"] == "running":
        return f"Run **{rid}** is running{what}: {html.escape(stage_parts(run['stage'])[0])}."
    status = run["status"]
    if status == "completed" and run.get("stop_reason"):
        return f"Run **{rid}** completed (stopped early): {html.escape(run['stop_reason'])}."
    if status == "completed":
        return f"Run **{rid}** completed: its charts are on the Results page."
    if status == "waiting":
        return f"Run **{rid}** is waiting for review on the Curate page."
    if status in RESUMABLE:
        return f"Run **{rid}** {status}: see Progress below (Resume continues it)."
    return f"Run **{rid}**: {html.escape(str(status))}."


def run_stage_text(run: dict) -> str:
    """The run's stage in words; a run cancelled while still queued never started."""
    if run["status"] == "cancelled" and run.get("stage") in (None, "", "created"):
        return "cancelled before it started"
    return stage_parts(run.get("stage"))[0]


def loss_chart(logs: list[dict], tau: float | None) -> alt.Chart | None:
    if not logs:
        return None
    df = pd.DataFrame(logs)
    df["round"] = "round " + df["round"].astype(str)
    long = df.melt(id_vars=["round", "step"], value_vars=["loss", "nll", "divergence"], var_name="series")
    long["series"] = long["series"].map({"loss": "loss", "nll": "NLL", "divergence": "D (KL aggregate)"})
    lines = alt.Chart(long).mark_line(point=alt.OverlayMarkDef(size=18)).encode(
        x=alt.X("step:Q", title="optimizer step", axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("value:Q", title="nats"),
        color=alt.Color("series:N", title="series"), strokeDash=alt.StrokeDash("round:N", title="round"),
        tooltip=["round", "step", "series", alt.Tooltip("value:Q", format=".4f")])
    chart = lines
    if tau is not None:
        rule = alt.Chart(pd.DataFrame({"tau": [tau]})).mark_rule(strokeDash=[4, 4], color="#999").encode(
            y="tau:Q", tooltip=[alt.Tooltip("tau:Q", title="barrier threshold τ")])
        chart = lines + rule
    return chart.properties(title="Heal: loss, NLL and the KL aggregate D per step (dashed grey: τ)",
                            width=860, height=260)
