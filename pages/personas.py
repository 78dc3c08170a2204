"""Personas: the contrastive pair, the context pool, vector extraction, per-layer norms."""

from __future__ import annotations

import difflib
import hashlib
import html
import shutil
from pathlib import Path

import altair as alt
import gradio as gr
import pandas as pd

from pages.common import Lab, count, error_html, friendly, job_status_md, lab_vector_job, latest_job, preset_for
from pages.science import items_note
from steerheal import jobs
from steerheal.config import PersonaPair
from steerheal.errors import SteerhealError
from steerheal.presets import default_contexts, persona_presets, read_lines

LOW_NORM_RATIO = 0.02  # |v| / |h| below this on every layer: the personas barely move the model
CUSTOM = "custom"  # the preset dropdown's entry for a pair of your own
CUSTOM_INFO = "Custom pair: your own personas (not a preset). Pick a preset to start from one."


def preset_info(name: str | None, presets: dict) -> str:
    """What the box beside the preset dropdown says for these personas."""
    return presets[name].get("description", "") if name in presets else CUSTOM_INFO


def pair_warnings(pos: str, neg: str, contexts: list[str]) -> list[str]:
    """Signs of a weak pair that are worth a look before spending compute."""
    out = []
    for side, text in (("positive", pos), ("negative", neg)):
        if not text.strip():
            out.append(f"The {side} persona is empty: Extract needs both personas.")
        elif len(text.strip()) < 15:
            out.append(f"The {side} persona is very short ({len(text.strip())} characters): describe the trait "
                       "in a full phrase.")
    if pos.strip() and pos.strip().lower() == neg.strip().lower():
        out.append("The two personas are identical: their difference, the steering vector, would be zero. Make "
                   "them differ on the trait.")
    ratio = difflib.SequenceMatcher(None, pos.lower(), neg.lower()).ratio()
    if pos.strip() and neg.strip() and ratio > 0.9 and pos.strip().lower() != neg.strip().lower():
        out.append(f"The two personas are {ratio:.0%} the same text: make them differ clearly on the trait.")
    if not contexts:
        out.append("The context pool is empty: give at least one user message per line.")
    elif len(contexts) < 8:
        out.append(f"Only {count(len(contexts), 'context')}: the mean difference will be noisy (the default pool "
                   "has 80).")
    return out


def norm_warnings(result: dict) -> list[str]:
    ratios = [n / max(h, 1e-9) for n, h in zip(result["norms"], result["residual_norms"])]
    if max(ratios) < LOW_NORM_RATIO:
        return [f"The vector is weak: |v| is under {LOW_NORM_RATIO:.0%} of the hidden-state norm on every layer "
                f"(at most {max(ratios):.2%}). The personas barely change the model's states."]
    return []


def norms_chart(result: dict) -> alt.Chart:
    df = pd.DataFrame({"layer": range(len(result["norms"])), "|v|": result["norms"],
                       "|v| / |h|": [n / max(h, 1e-9) for n, h in zip(result["norms"], result["residual_norms"])]})
    base = alt.Chart(df).encode(x=alt.X("layer:O", title="layer"))
    bars = base.mark_bar(color="#2563eb").encode(
        y=alt.Y("|v|:Q", title="|v| (steering vector norm)"),
        tooltip=["layer", alt.Tooltip("|v|:Q", format=".3f"), alt.Tooltip("|v| / |h|:Q", format=".2%")])
    ratio = base.mark_line(color="#d97706", point=True).encode(
        y=alt.Y("|v| / |h|:Q", title="|v| / |h| (share of the hidden-state norm)", axis=alt.Axis(format="%")))
    return alt.layer(bars, ratio).resolve_scale(y="independent").properties(
        title="Steering vector norm per layer (bars) and relative to the residual stream (line)",
        width=860, height=260)


def build(lab: Lab, timer: gr.Timer) -> dict:
    presets = persona_presets()
    first = next(iter(presets))
    gr.Markdown("## Personas\nTwo personas that differ only on the trait. The steering vector is the mean "
                "difference of the model's hidden states between them, at the last prompt token, over the contexts.")
    with gr.Row():
        preset = gr.Dropdown([*presets, CUSTOM], value=first, label="Preset", elem_id="persona-preset", scale=1)
        info = gr.Markdown(preset_info(first, presets), elem_id="persona-preset-info")
    with gr.Row():
        pos = gr.Textbox(presets[first]["pos"], label="Positive persona (\"You are ...\")", lines=2,
                         elem_id="persona-pos")
        neg = gr.Textbox(presets[first]["neg"], label="Negative persona (\"You are ...\")", lines=2,
                         elem_id="persona-neg")
    contexts = gr.Textbox("\n".join(default_contexts()), label="Context pool (one user message per line)",
                          lines=6, max_lines=12, elem_id="persona-contexts")
    warnings = gr.HTML(elem_id="persona-warnings")
    with gr.Row():
        extract = gr.Button("Extract vector", variant="primary", elem_id="extract-btn", scale=0, min_width=180)
        with gr.Column():
            extract_error = gr.HTML(elem_id="extract-error")  # a refusal, until the pair or pool changes
            status = gr.HTML(elem_id="extract-status")
    chart = gr.Plot(label="Per-layer norms", elem_id="norms-chart")
    with gr.Row():
        items_file = gr.File(label="Axis items for a pair of your own (JSONL: one {\"prompt\", \"pos\", \"neg\"} "
                                   "per line)", file_types=[".jsonl"], type="filepath", elem_id="items-file", scale=1)
        items_md = gr.HTML(items_note(first, False, None), elem_id="items-note-box")
    items_path = gr.State(None)  # the checked file, copied beside the store: runs started on Heal score with it
    vector_path = gr.State(None)
    vector_job = gr.State(None)  # the id of the vector job whose vector is in use (Steer and Heal say which)
    job_id = gr.State(None)

    def load_preset(name):
        if name not in presets:  # "custom": keep the boxes, say they are your own
            return gr.skip(), gr.skip(), CUSTOM_INFO
        p = presets[name]
        return p["pos"], p["neg"], preset_info(name, presets)

    preset.input(load_preset, preset, [pos, neg, info])

    def check(pos_text, neg_text, ctx_text):
        """Warnings for a weak pair, and the preset box following the personas: a pair of your
        own reads "custom", never a preset's description."""
        items = pair_warnings(pos_text, neg_text, read_lines(ctx_text))
        name = preset_for(pos_text, neg_text, presets)
        return ("".join(f"<div class='sh-warn'><b>Warning:</b> {w}</div>" for w in items),
                gr.update(value=name or CUSTOM), preset_info(name, presets))

    def check_items(pos_text, neg_text, uploaded):
        """Whether the pair has axis items; an uploaded file is checked (errors name file:line) and,
        when good, kept beside the store for the runs started on Heal."""
        name = preset_for(pos_text, neg_text, presets)
        if not uploaded:
            return items_note(name or first, name is None, None), None
        note = items_note(name or first, name is None, uploaded)
        if "sh-error" in note:
            return note.replace(html.escape(str(uploaded)), html.escape(Path(uploaded).name)), None
        kept = lab.store.lab_dir() / f"axis-items-{hashlib.sha256(Path(uploaded).read_bytes()).hexdigest()[:12]}.jsonl"
        shutil.copyfile(uploaded, kept)
        return items_note(name or first, name is None, str(kept)), str(kept)

    # One listener per check, not one per box: a listener handles its events in order, so the
    # warnings always describe the newest text (three listeners let a page load's stale check
    # land after the person's edit).
    gr.on([pos.change, neg.change, contexts.change], check, [pos, neg, contexts], [warnings, preset, info],
          show_progress="hidden", trigger_mode="always_last")
    # A refusal goes once the text differs from what was refused, not on every change event: the
    # page load's restore also changes the boxes, and its late events wiped a fresh refusal.
    refused = gr.State(None)  # [pos, neg, contexts] of the refused Extract

    def clear_refusal(pos_text, neg_text, ctx_text, refused_texts):
        if refused_texts is not None and [pos_text, neg_text, ctx_text] == refused_texts:
            return gr.skip()
        return ""

    gr.on([pos.change, neg.change, contexts.change], clear_refusal, [pos, neg, contexts, refused], extract_error,
          queue=False, show_progress="hidden")
    gr.on([pos.change, neg.change, items_file.change], check_items, [pos, neg, items_file], [items_md, items_path],
          show_progress="hidden", trigger_mode="always_last")

    @friendly
    def queue_extraction(pos_text, neg_text, ctx_text):
        PersonaPair(pos=pos_text, neg=neg_text).validate()
        ctx = read_lines(ctx_text)
        if not ctx:
            raise SteerhealError("The context pool is empty: give at least one user message per line.")
        if len(ctx) > 5000:
            raise SteerhealError(f"{len(ctx)} contexts is too many for one extraction: keep it under 5000.")
        jid = jobs.submit(lab.store, "vector", dict(model=lab.preview.model_name, load_in_4bit=lab.preview.load_in_4bit, pos=pos_text, neg=neg_text,
                                                    contexts=ctx))
        return jid, job_status_md(lab.store.job(jid), "extraction"), ""

    def submit(pos_text, neg_text, ctx_text):
        """Queue the extraction, or say beside the button why not (until the pair or pool changes);
        never raises, so no bare red "Error" badges are left behind."""
        try:
            return *queue_extraction(pos_text, neg_text, ctx_text), None
        except gr.Error as err:
            message = getattr(err, "message", None) or str(err)
            gr.Warning(message)
            return gr.skip(), gr.skip(), error_html("Not extracted", message), [pos_text, neg_text, ctx_text]

    def in_use(res: dict, md: str) -> str:
        md += "".join(f"<div class='sh-warn'><b>Warning:</b> {w}</div>" for w in norm_warnings(res))
        return md + (f"<div class='sh-muted'>Saved {res['path']} ({res['n_layers']} layers). "
                     "The Steer page uses it now.</div>")

    def refresh(jid, current_path):
        """Poll the extraction job; when it finishes, show the norms and hand the vector on. With
        no vector in hand (a fresh page), the newest completed one in the store is in use."""
        job = lab.store.job(jid) if jid else latest_job(lab.store, "vector")
        if job is None:
            return gr.skip(), "<span class='sh-muted'>No vector yet.</span>", current_path, gr.skip(), gr.skip()
        md = job_status_md(job, "extraction")
        busy = job["status"] in ("queued", "running")
        if job["status"] == "completed" and job["result"].get("path") != current_path:
            res = job["result"]
            return norms_chart(res), in_use(res, md), res["path"], gr.update(interactive=True), job["id"]
        if current_path is None and job["status"] != "completed":
            done = lab_vector_job(lab.store)
            if done is not None:  # the newest extraction failed or is running: the last good one is in use
                res = done["result"]
                md += f"<div class='sh-muted'>In use meanwhile: the vector of extraction #{done['id']}.</div>"
                return norms_chart(res), in_use(res, md), res["path"], gr.update(interactive=not busy), done["id"]
        return gr.skip(), md, current_path, gr.update(interactive=not busy), gr.skip()

    def restore():
        """On page load: the pair and contexts last written here, and the vector in use, from the
        store (the newest vector job), so a refresh shows what the next run and preview use."""
        job = latest_job(lab.store, "vector")
        if job is None:  # nothing written yet: keep the defaults (and anything already typed)
            boxes = (gr.skip(),) * 5
        else:
            p = job["params"]
            pos_text, neg_text = p.get("pos", ""), p.get("neg", "")
            ctx = "\n".join(p.get("contexts") or default_contexts())
            name = preset_for(pos_text, neg_text, presets)
            boxes = (gr.update(value=name or CUSTOM), preset_info(name, presets), pos_text, neg_text, ctx)
        return (*boxes, *refresh(None, None))

    outputs = [chart, status, vector_path, extract, vector_job]
    gr.on(None, restore, None, [preset, info, pos, neg, contexts, *outputs], show_progress="hidden")
    extract.click(lambda: gr.update(interactive=False), None, extract, queue=False).then(
        submit, [pos, neg, contexts], [job_id, status, extract_error, refused]).then(
        refresh, [job_id, vector_path], outputs)
    timer.tick(refresh, [job_id, vector_path], outputs, show_progress="hidden")
    return dict(pos=pos, neg=neg, contexts=contexts, vector_path=vector_path, vector_job=vector_job,
                items=items_path)
