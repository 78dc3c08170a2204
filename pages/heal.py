"""Heal: configure and launch the multi-round loop as a background job; follow it live (stage,
round, step, loss and barrier curves); cancel and resume."""

from __future__ import annotations

import html
from dataclasses import replace

import altair as alt
import gradio as gr
import pandas as pd

from pages.common import Lab, as_float, as_int, friendly, job_status_md, parse_floats, run_choices
from steerheal import jobs
from steerheal.errors import SteerhealError
from steerheal.heal import HealConfig
from steerheal.loop import RunConfig, start_run
from steerheal.presets import default_contexts, persona_presets, read_lines

RESUMABLE = ("interrupted", "failed")


def loss_chart(logs: list[dict], tau: float | None) -> alt.Chart | None:
    if not logs:
        return None
    df = pd.DataFrame(logs)
    df["round"] = "round " + df["round"].astype(str)
    long = df.melt(id_vars=["round", "step"], value_vars=["loss", "nll", "divergence"], var_name="series")
    long["series"] = long["series"].map({"loss": "loss", "nll": "NLL", "divergence": "D (KL aggregate)"})
    lines = alt.Chart(long).mark_line(point=alt.OverlayMarkDef(size=18)).encode(
        x=alt.X("step:Q", title="optimizer step"), y=alt.Y("value:Q", title="nats"),
        color=alt.Color("series:N", title="series"), strokeDash=alt.StrokeDash("round:N", title="round"),
        tooltip=["round", "step", "series", alt.Tooltip("value:Q", format=".4f")])
    chart = lines
    if tau is not None:
        rule = alt.Chart(pd.DataFrame({"tau": [tau]})).mark_rule(strokeDash=[4, 4], color="#999").encode(
            y="tau:Q", tooltip=[alt.Tooltip("tau:Q", title="barrier threshold τ")])
        chart = lines + rule
    return chart.properties(title="Heal: loss, NLL and the KL aggregate D per step (dashed grey: τ)",
                            width=860, height=260)


def run_config_from_form(model_name: str, rounds_v, alphas_v, n_v, tokens_v, curation_v, agg_v, tau_v, lam_v,
                         power_v, ref_v, rank_v, lr_v, epochs_v, limit_v, think_v, probe_v, seed_v, random_v, pos_v,
                         neg_v, contexts_v, layers_v) -> RunConfig:
    """The Heal form's values as a validated RunConfig (a SteerhealError says what to change)."""
    d, h = RunConfig(), HealConfig(rank=16, lora_alpha=32, epochs=2)
    for label, value in (("Positive persona", pos_v), ("Negative persona", neg_v), ("Context pool", contexts_v),
                         ("Layer band", layers_v), ("Strengths", alphas_v)):
        if value is not None and len(str(value)) > 200_000:
            raise SteerhealError(f"{label} is too long ({len(str(value))} characters).")
    if curation_v not in ("auto", "manual"):
        raise SteerhealError("Curation must be auto or manual.")
    limit = as_int(limit_v, "Eval rows", 0)
    pool = read_lines(contexts_v or "")
    if not pool:
        raise SteerhealError("The context pool on the Personas page is empty: give one user message per line.")
    preset = next((name for name, p in persona_presets().items() if (p["pos"], p["neg"]) == (pos_v, neg_v)),
                  None)
    rank_i = as_int(rank_v, "LoRA rank", 1, 1024)
    heal_cfg = replace(h, agg=agg_v, tau=as_float(tau_v, "τ"), lam=as_float(lam_v, "λ"),
                       lam_power=as_float(power_v, "λ power"), ref=ref_v, rank=rank_i, lora_alpha=2 * rank_i,
                       lr=as_float(lr_v, "Learning rate", 0), epochs=as_int(epochs_v, "Epochs", 1, 1000))
    return RunConfig(rounds=as_int(rounds_v, "Rounds", 1, 1000), alphas=tuple(parse_floats(alphas_v, "strength")),
                     n_completions=as_int(n_v, "Completions per round", 1, 100000),
                     max_new_tokens=as_int(tokens_v, "Max tokens", 1, 4096), curation=curation_v,
                     eval_limit=limit or None, think_tokens=as_int(think_v, "Think tokens", 1, 4096),
                     seed=as_int(seed_v, "Seed", 0), random_control=bool(random_v),
                     probe_tokens=as_int(probe_v, "Probe answer tokens", 1, 4096),
                     contexts=None if pool == default_contexts() else tuple(pool),
                     pair=preset or d.pair, pos=None if preset else pos_v, neg=None if preset else neg_v,
                     layers=layers_v or d.layers, model=model_name, heal=heal_cfg).validate()


def build(lab: Lab, timer: gr.Timer, personas: dict, steer: dict) -> dict:
    d, h = RunConfig(), HealConfig(rank=16, lora_alpha=32, epochs=2)
    gr.Markdown("## Heal\nThe loop: per round, re-extract the vector, generate and filter completions, train a "
                "LoRA with NLL + λ·relu(D − τ), bake it in, and evaluate (tinymfv + probes). Runs in the "
                "background worker; this page follows it. The personas come from the Personas page.")
    with gr.Accordion("Loop settings", open=True):
        with gr.Row():
            rounds = gr.Number(d.rounds, label="Rounds", precision=0, elem_id="heal-rounds")
            alphas = gr.Textbox(", ".join(f"{a:g}" for a in d.alphas), label="Strengths α", elem_id="heal-alphas")
            n_comp = gr.Number(d.n_completions, label="Completions per round", precision=0, elem_id="heal-n")
            max_tokens = gr.Number(d.max_new_tokens, label="Max tokens", precision=0, elem_id="heal-max-tokens")
            curation = gr.Radio(["auto", "manual"], value="auto", label="Curation", elem_id="heal-curation",
                                info="manual: wait on the Curate page each round")
        with gr.Row():
            agg = gr.Dropdown(["mean", "rmse", "p95", "max"], value=h.agg, label="KL aggregate", elem_id="heal-agg")
            tau = gr.Number(h.tau, label="τ (barrier threshold, nats)", elem_id="heal-tau")
            lam = gr.Number(h.lam, label="λ", elem_id="heal-lam")
            lam_power = gr.Number(h.lam_power, label="λ power per round p", elem_id="heal-lam-power",
                                  info="λ_r = λ (1 + r)^p")
            ref = gr.Radio(["base", "prev"], value=h.ref, label="Reference", elem_id="heal-ref")
            random_control = gr.Checkbox(False, label="Random-vector control", elem_id="heal-random",
                                         info="also eval a random vector of the same norms")
        with gr.Row():
            rank = gr.Number(h.rank, label="LoRA rank", precision=0, elem_id="heal-rank")
            lr = gr.Number(h.lr, label="Learning rate", elem_id="heal-lr")
            epochs = gr.Number(h.epochs, label="Epochs", precision=0, elem_id="heal-epochs")
            eval_limit = gr.Number(0, label="Eval rows (0 = all)", precision=0, elem_id="heal-eval-limit")
            think = gr.Number(d.think_tokens, label="Think tokens T", precision=0, elem_id="heal-think")
            probe_tokens = gr.Number(d.probe_tokens, label="Probe answer tokens", precision=0,
                                     elem_id="heal-probe-tokens")
            seed = gr.Number(d.seed, label="Seed", precision=0, elem_id="heal-seed")
    with gr.Row():
        start = gr.Button("Start run", variant="primary", elem_id="start-run-btn", scale=0, min_width=160)
        start_md = gr.Markdown(elem_id="start-run-status")
    gr.Markdown("### Progress")
    with gr.Row():
        which = gr.Dropdown(choices=run_choices(lab.store), label="Run", elem_id="heal-run", scale=3)
        cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-btn", scale=0, min_width=120)
        resume = gr.Button("Resume", elem_id="resume-btn", scale=0, min_width=120)
    progress = gr.HTML(elem_id="heal-progress")
    curve = gr.Plot(label="Training curves", elem_id="loss-chart")

    fields = [rounds, alphas, n_comp, max_tokens, curation, agg, tau, lam, lam_power, ref, rank, lr, epochs,
              eval_limit, think, probe_tokens, seed, random_control, personas["pos"], personas["neg"],
              personas["contexts"], steer["layers"]]

    @friendly
    def submit(*values):
        cfg = replace(run_config_from_form(lab.preview.model_name, *values), load_in_4bit=lab.preview.load_in_4bit)
        run_id = start_run(lab.store, cfg)
        jid = jobs.submit(lab.store, "loop", dict(run_id=run_id), run_id=run_id)
        return (f"Run **{run_id}** queued (job {jid}).", gr.update(choices=run_choices(lab.store), value=run_id),
                gr.update(interactive=True))

    def loop_job(run_id):
        found = lab.store.jobs(limit=1, kind="loop", run_id=run_id)
        return found[0] if found else None

    def curves(run_id):
        run = lab.store.run(int(run_id))
        return loss_chart(lab.store.rows("train_logs", run["id"]), run["config"].get("heal", {}).get("tau"))

    def status(run_id):
        """The run's state, its job, and which of cancel / resume apply (everything but the curves)."""
        if run_id is None:
            return "<span class='sh-muted'>No run selected.</span>", gr.update(interactive=False), \
                gr.update(interactive=False)
        lab.store.mark_stale_jobs()
        run = lab.store.run(int(run_id))
        job = loop_job(run["id"])
        lines = [f"<div class='sh-job' id='run-state' data-status='{run['status']}'><b>run {run['id']}</b> "
                 f"<span class='sh-badge sh-{run['status']}'>{run['status']}</span> · {html.escape(str(run['stage']))}"
                 "</div>"]
        if job and job["status"] in ("queued", "running"):
            lines.append(job_status_md(job, "loop job"))
        if run["status"] == "waiting":
            lines.append("<div class='sh-warn'>Waiting for review: approve or reject the completions on the Curate "
                         "page, then press <b>Continue the run</b> there.</div>")
        if run.get("error") and run["status"] in RESUMABLE:
            lines.append(f"<div class='sh-error'>{html.escape(run['error'])}</div>")
        done = [r["round"] for r in lab.store.rows("rounds", run["id"]) if r["status"] == "completed"]
        lines.append(f"<div class='sh-muted'>rounds completed: {len(done)} of {run['config'].get('rounds')}</div>")
        busy = bool(job and job["status"] in ("queued", "running"))
        return "".join(lines), gr.update(interactive=busy), gr.update(interactive=not busy and run["status"] in RESUMABLE)

    def view(run_id):
        state, cancel_u, resume_u = status(run_id)
        return state, None if run_id is None else curves(run_id), cancel_u, resume_u

    @friendly
    def do_cancel(run_id):
        job = loop_job(int(run_id)) if run_id is not None else None
        if not job or job["status"] not in ("queued", "running"):
            raise SteerhealError("Nothing to cancel: this run has no job in progress.")
        lab.store.request_cancel(job["id"])
        if job["status"] == "queued":
            lab.store.set_run(int(run_id), status="interrupted", error="cancelled before it started")
        gr.Info("Cancel requested: the run stops at its next checkpoint and can be resumed.")
        return view(run_id)

    @friendly
    def do_resume(run_id):
        if run_id is None:
            raise SteerhealError("Pick a run to resume.")
        run = lab.store.run(int(run_id))
        job = loop_job(run["id"])
        if job and job["status"] in ("queued", "running"):
            raise SteerhealError(f"Run {run['id']} is already running (job {job['id']}).")
        if run["status"] not in RESUMABLE:
            raise SteerhealError(f"Run {run['id']} is {run['status']}: only interrupted or failed runs resume.")
        lab.store.set_run(run["id"], status="running", error=None)
        jobs.submit(lab.store, "loop", dict(run_id=run["id"]), run_id=run["id"])
        return view(run_id)

    start.click(lambda: gr.update(interactive=False), None, start, queue=False).then(
        submit, fields, [start_md, which, start]).then(lambda: gr.update(interactive=True), None, start)
    which.change(view, which, [progress, curve, cancel, resume])
    cancel.click(do_cancel, which, [progress, curve, cancel, resume])
    resume.click(do_resume, which, [progress, curve, cancel, resume])

    drawn_key = gr.State(None)

    def tick(run_id, last_key):
        choices = run_choices(lab.store)
        state, cancel_u, resume_u = status(run_id)
        # build and redraw the curves only when a step was logged (no flicker, no work while idle)
        key = None if run_id is None else (int(run_id), lab.store.change_marker("train_logs", int(run_id)))
        if key == last_key:
            chart = gr.skip()
        else:
            chart = None if run_id is None else curves(run_id)
        return gr.update(choices=choices), state, chart, cancel_u, resume_u, key

    timer.tick(tick, [which, drawn_key], [which, progress, curve, cancel, resume, drawn_key], show_progress="hidden")
    return dict(run=which)
