"""Heal: configure and launch the multi-round loop as a background job; follow it live (stage,
round, step, loss and barrier curves); cancel and resume."""

from __future__ import annotations

import html
import logging
import os
import re
from dataclasses import replace

import altair as alt
import gradio as gr
import pandas as pd

from pages.common import (Lab, as_float, as_int, clock, count, friendly, job_status_md, pair_label, parse_floats,
                          preset_for, run_choices, vector_summary)
from pages.science import stop_note
from steerheal import jobs
from steerheal.errors import SteerhealError
from steerheal.evals.tinymfv_data import HUB_DATASET, demo_set, load_vignettes
from steerheal.heal import MIN_EXAMPLES, HealConfig
from steerheal.loop import RunConfig, start_run
from steerheal.presets import default_contexts, persona_presets, read_lines

RESUMABLE = ("interrupted", "cancelled", "failed")
BUSY = ("queued", "running")
MIN_ROUNDS = 1
MIN_COMPLETIONS = MIN_EXAMPLES  # heal trains on the kept completions and refuses fewer than this
log = logging.getLogger("steerheal.app")

# The loop's stages (run stage "round N: <name>[ k/n]" and job progress "<name>") in words.
STAGE_WORDS = {
    "created": "starting",
    "vector": "extracting the steering vector",
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


def completions_problem(n: int) -> str | None:
    """Why this many completions per round cannot heal (None when it can, at least before filtering)."""
    if n < MIN_COMPLETIONS:
        return (f"Completions per round must be at least {MIN_COMPLETIONS}, got {n}: heal trains on the kept "
                f"completions and needs at least {MIN_COMPLETIONS}. Set it to {MIN_COMPLETIONS} or more (more is "
                "safer: the filters drop some).")
    return None


def start_error_md(message: str) -> str:
    """The form's refusal, shown beside Start run until the input changes or the next press."""
    return f"<div class='sh-error'>Not started: {html.escape(message)}</div>"


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


def run_uses_html(pos: str, neg: str, contexts_text: str, layers: str, vector_job: dict | None,
                  presets: dict) -> str:
    """The line above Start run: the pair, contexts and band the run will use (read from the
    Personas and Steer pages), and how its vector relates to the one the Steer page previews."""
    pool = read_lines(contexts_text or "")
    n = f"the {len(pool)} default contexts" if pool == default_contexts() else count(len(pool), "context")
    pair = html.escape(pair_label(pos or "", neg or "", presets), quote=False)
    line = (f"<b>This run will use:</b> {pair}, {n}, layer band {html.escape(str(layers or ''), quote=False)}. It "
            "extracts its own vector from this pair and these contexts each round (round 0 on the base model)")
    if vector_job:
        p = vector_job.get("params") or {}
        same = (p.get("pos"), p.get("neg"), list(p.get("contexts") or default_contexts())) == (pos, neg, pool)
        if same:
            line += (f"; the Steer page previews the same pair and contexts (job {vector_job['id']}, extracted "
                     f"{clock(vector_job.get('finished'))})")
        else:
            line += (f"; the Steer page previews a different vector ("
                     f"{html.escape(vector_summary(vector_job, presets), quote=False)}): extract this pair on the "
                     "Personas page to preview it")
    return f"<div class='sh-muted' id='heal-uses-line'>{line}.</div>"


def run_stage_text(run: dict) -> str:
    """The run's stage in words; a run cancelled while still queued never started."""
    if run["status"] == "cancelled" and run.get("stage") in (None, "", "created"):
        return "cancelled before it started"
    return stage_parts(run.get("stage"))[0]


def loop_settings(config: dict) -> dict:
    """A stored run's Loop settings as the form shows them (keyed like the form's fields), so
    picking an old run shows its own settings rather than the defaults."""
    d, heal = RunConfig(), dict(config.get("heal") or {})
    h = HealConfig(rank=16, lora_alpha=32, epochs=2)

    def get(key, default):
        value = config.get(key)
        return default if value is None else value

    return dict(rounds=get("rounds", d.rounds), alphas=", ".join(f"{float(a):g}" for a in get("alphas", d.alphas)),
                n_completions=get("n_completions", d.n_completions),
                max_new_tokens=get("max_new_tokens", d.max_new_tokens), curation=get("curation", d.curation),
                agg=heal.get("agg", h.agg), tau=heal.get("tau", h.tau), lam=heal.get("lam", h.lam),
                lam_power=heal.get("lam_power", h.lam_power), ref=heal.get("ref", h.ref),
                random_control=bool(get("random_control", d.random_control)), rank=heal.get("rank", h.rank),
                lr=heal.get("lr", h.lr), epochs=heal.get("epochs", h.epochs), eval_limit=get("eval_limit", 0),
                think_tokens=get("think_tokens", d.think_tokens), probe_tokens=get("probe_tokens", d.probe_tokens),
                seed=get("seed", d.seed), tinymfv={"on": "full"}.get(get("tinymfv", "on"), get("tinymfv", "on")),
                axis_limit=get("axis_limit", 0), drift_prompts=get("drift_prompts", 40),
                drift_tokens=get("drift_tokens", d.drift_tokens),
                incoherence_ceiling=get("incoherence_ceiling", d.incoherence_ceiling))


def tinymfv_data_html(env=None) -> str:
    """Which tinymfv data a run started now will evaluate on (the worker has the app's
    environment), and how to give it the real data."""
    env = os.environ if env is None else env
    how = ("To use the real data, start the app with <code>STEERHEAL_TINYMFV_DIR=/path/to/tinymfv</code> (the folder "
           "of <code>vignettes_*.jsonl</code> files), or set <code>data_dir</code> in a run config for "
           "<code>steerheal run</code>.")
    folder = env.get("STEERHEAL_TINYMFV_DIR")
    if folder:
        try:
            data = load_vignettes(data_dir=folder)
        except SteerhealError as err:
            return (f"<div class='sh-error' id='heal-data-line'><b>tinymfv data:</b> STEERHEAL_TINYMFV_DIR is "
                    f"{html.escape(folder)}, but {html.escape(str(err))} A run that evaluates on tinymfv will fail "
                    "until this is fixed.</div>")
        return (f"<div class='sh-muted' id='heal-data-line'><b>tinymfv data:</b> {len(data.rows)} vignettes from "
                f"<code>{html.escape(folder)}</code> (STEERHEAL_TINYMFV_DIR): comparable with published tinymfv "
                "numbers.</div>")
    demo = (f"the {len(demo_set().rows)} demo vignettes bundled with steerheal, marked <b>not comparable</b> with "
            "tinymfv")
    if env.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return f"<div class='sh-warn' id='heal-data-line'><b>tinymfv data:</b> {demo} (offline, and no " \
               f"STEERHEAL_TINYMFV_DIR). {how}</div>"
    return (f"<div class='sh-warn' id='heal-data-line'><b>tinymfv data:</b> the hub dataset {HUB_DATASET}, fetched "
            f"when the run starts; if the hub cannot be reached, {demo}. {how}</div>")


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


def run_config_from_form(model_name: str, rounds_v, alphas_v, n_v, tokens_v, curation_v, agg_v, tau_v, lam_v,
                         power_v, ref_v, rank_v, lr_v, epochs_v, limit_v, think_v, probe_v, seed_v, random_v, pos_v,
                         neg_v, contexts_v, layers_v, tinymfv_v="auto", axis_limit_v=0, drift_prompts_v=32,
                         drift_tokens_v=32, ceiling_v=2.0, items_v=None) -> RunConfig:
    """The Heal form's values as a validated RunConfig (a SteerhealError says what to change).
    tinymfv "auto" with a number of rows asks for tinymfv on that many rows (a subset)."""
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
    preset = preset_for(pos_v, neg_v, persona_presets())
    rounds = as_int(rounds_v, "Rounds", MIN_ROUNDS, 1000)
    n_completions = as_int(n_v, "Completions per round", 1, 100000)
    problem = completions_problem(n_completions)
    if problem:
        raise SteerhealError(problem)
    rank_i = as_int(rank_v, "LoRA rank", 1, 1024)
    heal_cfg = replace(h, agg=agg_v, tau=as_float(tau_v, "τ"), lam=as_float(lam_v, "λ"),
                       lam_power=as_float(power_v, "λ power"), ref=ref_v, rank=rank_i, lora_alpha=2 * rank_i,
                       lr=as_float(lr_v, "Learning rate", 0), epochs=as_int(epochs_v, "Epochs", 1, 1000))
    if tinymfv_v not in ("auto", "off", "subset", "full"):
        raise SteerhealError("tinymfv must be auto, off, subset or full.")
    tinymfv = "subset" if tinymfv_v == "auto" and limit else tinymfv_v
    axis_limit = as_int(axis_limit_v, "Axis items", 0)
    drift_prompts = as_int(drift_prompts_v, "Incoherence prompts", 2, 40)
    return RunConfig(rounds=rounds, alphas=tuple(parse_floats(alphas_v, "strength")),
                     n_completions=n_completions, tinymfv=tinymfv, axis_limit=axis_limit or None,
                     drift_prompts=drift_prompts,
                     drift_tokens=as_int(drift_tokens_v, "Incoherence tokens", 2, 2048),
                     incoherence_ceiling=as_float(ceiling_v, "Stop above incoherence"),
                     axis_items=items_v or None,
                     max_new_tokens=as_int(tokens_v, "Max tokens", 1, 4096), curation=curation_v,
                     eval_limit=limit or None, think_tokens=as_int(think_v, "Think tokens", 1, 4096),
                     seed=as_int(seed_v, "Seed", 0), random_control=bool(random_v),
                     probe_tokens=as_int(probe_v, "Probe answer tokens", 1, 4096),
                     contexts=None if pool == default_contexts() else tuple(pool),
                     pair=preset or d.pair, pos=None if preset else pos_v, neg=None if preset else neg_v,
                     layers=layers_v or d.layers, model=model_name, heal=heal_cfg).validate()


def build(lab: Lab, timer: gr.Timer, personas: dict, steer: dict, demo: gr.Blocks, saved: gr.BrowserState) -> dict:
    """saved: the run this page follows, kept in the browser across a refresh."""
    d, h = RunConfig(), HealConfig(rank=16, lora_alpha=32, epochs=2)
    gr.Markdown("## Heal\nThe loop: per round, re-extract the vector, generate and filter completions, train a "
                "LoRA with NLL + λ·relu(D − τ), bake it in, and evaluate (tinymfv + probes). Runs in the "
                "background worker; this page follows it. The personas come from the Personas page.")
    with gr.Accordion("Loop settings", open=True):
        settings_note = gr.Markdown(elem_id="heal-settings-note")
        with gr.Row():
            rounds = gr.Number(d.rounds, label=f"Rounds (min {MIN_ROUNDS})", precision=0, elem_id="heal-rounds")
            alphas = gr.Textbox(", ".join(f"{a:g}" for a in d.alphas), label="Strengths α", elem_id="heal-alphas")
            n_comp = gr.Number(d.n_completions, label=f"Completions per round (min {MIN_COMPLETIONS})", precision=0,
                               elem_id="heal-n", info=f"heal needs {MIN_COMPLETIONS} kept; the filters drop some, "
                                                      "so more is safer")
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
            epochs = gr.Number(h.epochs, label="Epochs (min 1)", precision=0, elem_id="heal-epochs")
            eval_limit = gr.Number(0, label="tinymfv rows (0 = all)", precision=0, elem_id="heal-eval-limit")
            think = gr.Number(d.think_tokens, label="Think tokens T", precision=0, elem_id="heal-think")
            probe_tokens = gr.Number(d.probe_tokens, label="Probe answer tokens", precision=0,
                                     elem_id="heal-probe-tokens")
            seed = gr.Number(d.seed, label="Seed", precision=0, elem_id="heal-seed")
        with gr.Row():
            tinymfv = gr.Dropdown(["auto", "off", "subset", "full"], value=d.tinymfv, label="tinymfv",
                                  elem_id="heal-tinymfv", info="auto: off on the bundled model (it cannot answer "
                                                               "the format), all rows otherwise; rows > 0: a subset")
            axis_limit = gr.Number(0, label="Axis items (0 = all held-out)", precision=0, elem_id="heal-axis-limit")
            drift_prompts = gr.Number(d.drift_prompts, label="Incoherence prompts (of 40)", precision=0,
                                      elem_id="heal-drift-prompts")
            drift_tokens = gr.Number(d.drift_tokens, label="Incoherence tokens", precision=0,
                                     elem_id="heal-drift-tokens")
            ceiling = gr.Number(d.incoherence_ceiling, label="Stop above incoherence (nats)",
                                elem_id="heal-ceiling", info="healed KL rmse to base above the base's")
    presets = persona_presets()
    uses_inputs = [personas["pos"], personas["neg"], personas["contexts"], steer["layers"], personas["vector_job"]]

    def uses(pos_v, neg_v, contexts_v, layers_v, vector_job_id):
        return run_uses_html(pos_v, neg_v, contexts_v, layers_v,
                             lab.store.job(vector_job_id) if vector_job_id else None, presets)

    gr.HTML(uses, inputs=uses_inputs, elem_id="heal-uses")
    gr.HTML(tinymfv_data_html, elem_id="heal-data")
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
              personas["contexts"], steer["layers"], tinymfv, axis_limit, drift_prompts, drift_tokens, ceiling,
              personas["items"]]

    def submit(*values):
        """Queue the run, or say beside the button what to change. Never raises: a raised error
        would end the click's event chain and leave the button disabled."""
        try:
            cfg = replace(run_config_from_form(lab.preview.model_name, *values),
                          load_in_4bit=lab.preview.load_in_4bit)
            run_id = start_run(lab.store, cfg)
            jid = jobs.submit(lab.store, "loop", dict(run_id=run_id), run_id=run_id)
        except Exception as err:  # noqa: BLE001 - every refusal goes beside the button
            if isinstance(err, (SteerhealError, gr.Error)):
                message = getattr(err, "message", None) or str(err)
            else:
                log.exception("unexpected error starting a run")
                message = (f"Something went wrong ({type(err).__name__}: {err}). The details are in the server "
                           "log.")
            gr.Warning(message)
            return start_error_md(message), gr.skip(), gr.update(interactive=True), {"error": message}, gr.skip()
        return (f"Run **{run_id}** queued (job {jid}).", gr.update(choices=run_choices(lab.store), value=run_id),
                gr.update(interactive=False), {"run": run_id}, {"run": run_id})

    def loop_job(run_id):
        found = lab.store.jobs(limit=1, kind="loop", run_id=run_id)
        return found[0] if found else None

    def job_line(job, run):
        """The loop job's line: its stage in words, and a bar: the count from the job's progress or
        the run's stage ("eval healed 3/10"), else a moving bar (a stage that reports no count)."""
        prog = dict(job.get("progress") or {})
        if prog.get("stage"):
            prog["stage"] = stage_parts(prog["stage"])[0]
        if not (isinstance(prog.get("done"), int) and isinstance(prog.get("total"), int)):
            _, done, total = stage_parts(run["stage"])
            prog.update(done=done, total=total)
        return job_status_md({**job, "progress": prog}, "loop job", busy_bar=True)

    def busy_run(run_id) -> bool:
        if run_id is None:
            return False
        job = loop_job(int(run_id))
        return bool(job and job["status"] in BUSY)

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
        busy = bool(job and job["status"] in BUSY)
        lines = [f"<div class='sh-job' id='run-state' data-status='{run['status']}'><b>run {run['id']}</b> "
                 f"<span class='sh-badge sh-{run['status']}'>{run['status']}</span> · "
                 f"{html.escape(run_stage_text(run))}"
                 "</div>"]
        if busy:
            lines.append(job_line(job, run))
        if run["status"] == "waiting":
            lines.append("<div class='sh-warn'>Waiting for review: approve or reject the completions on the Curate "
                         "page, then press <b>Continue the run</b> there.</div>")
        if run.get("error") and run["status"] in RESUMABLE:
            lines.append(f"<div class='sh-error'>{html.escape(run['error'])}</div>")
        lines.append(stop_note(run))
        done = [r["round"] for r in lab.store.rows("rounds", run["id"]) if r["status"] == "completed"]
        lines.append(f"<div class='sh-muted'>rounds completed: {len(done)} of {run['config'].get('rounds')}</div>")
        return "".join(lines), gr.update(interactive=busy), gr.update(interactive=not busy and run["status"] in RESUMABLE)

    def view(run_id):
        state, cancel_u, resume_u = status(run_id)
        return state, None if run_id is None else curves(run_id), cancel_u, resume_u

    @friendly
    def do_cancel(run_id):
        job = loop_job(int(run_id)) if run_id is not None else None
        if not job or job["status"] not in BUSY:
            raise SteerhealError("Nothing to cancel: this run has no job in progress.")
        lab.store.request_cancel(job["id"])
        if job["status"] == "queued":
            lab.store.set_run(int(run_id), status="cancelled", error="cancelled before it started")
        gr.Info("Cancel requested: the run stops at its next checkpoint and can be resumed.")
        return view(run_id)

    @friendly
    def do_resume(run_id):
        if run_id is None:
            raise SteerhealError("Pick a run to resume.")
        run = lab.store.run(int(run_id))
        job = loop_job(run["id"])
        if job and job["status"] in BUSY:
            raise SteerhealError(f"Run {run['id']} is already running (job {job['id']}).")
        if run["status"] not in RESUMABLE:
            raise SteerhealError(f"Run {run['id']} is {run['status']}: only interrupted, cancelled or failed runs resume.")
        lab.store.set_run(run["id"], status="running", error=None)
        jobs.submit(lab.store, "loop", dict(run_id=run["id"]), run_id=run["id"])
        return view(run_id)

    note = gr.State(None)  # what the line beside Start run shows: {"error": text} or {"run": id, "md": text}

    start.click(lambda: (gr.update(interactive=False), ""), None, [start, start_md], queue=False).then(
        submit, fields, [start_md, which, start, note, saved])

    def clear_error(current):
        if current and "error" in current:
            return "", None
        return gr.skip(), gr.skip()

    gr.on([f.input for f in fields if not isinstance(f, gr.State)], clear_error, note, [start_md, note], queue=False, show_progress="hidden")
    which.change(view, which, [progress, curve, cancel, resume])

    # A picked run shows its own Loop settings; the run followed here survives a refresh.
    settings = dict(rounds=rounds, alphas=alphas, n_completions=n_comp, max_new_tokens=max_tokens, curation=curation,
                    agg=agg, tau=tau, lam=lam, lam_power=lam_power, ref=ref, random_control=random_control, rank=rank,
                    lr=lr, epochs=epochs, eval_limit=eval_limit, think_tokens=think, probe_tokens=probe_tokens,
                    seed=seed, tinymfv=tinymfv, axis_limit=axis_limit, drift_prompts=drift_prompts,
                    drift_tokens=drift_tokens, incoherence_ceiling=ceiling)

    def show_settings(run_id):
        if run_id is None:
            return (gr.skip(),) * (len(settings) + 1)
        run = lab.store.run(int(run_id))
        values = loop_settings(run["config"])
        return (*(values[k] for k in settings), f"<span class='sh-muted'>Showing run {run['id']}'s settings; change "
                                                 "any of them and press Start run for a new run.</span>")

    which.change(show_settings, which, [*settings.values(), settings_note], show_progress="hidden")
    # Saved on a person's pick (and by Start run), never from .change: a BrowserState written by a
    # .change listener re-fires that .change, again and again (redrawing and refilling the form).
    which.input(lambda r: {"run": r}, which, saved, show_progress="hidden")

    def restore(before):
        """On page load: the run followed before the refresh, else the newest run that is going."""
        known = [r["id"] for r in lab.store.runs()]
        rid = before.get("run") if isinstance(before, dict) else None
        if rid not in known:
            going = [r for r in known if busy_run(r)]
            rid = going[-1] if going else None
        if rid is None:
            return gr.skip(), gr.skip()
        return gr.update(choices=run_choices(lab.store), value=rid), {"run": rid} if busy_run(rid) else gr.skip()

    demo.load(restore, saved, [which, note], show_progress="hidden")
    cancel.click(do_cancel, which, [progress, curve, cancel, resume])
    resume.click(do_resume, which, [progress, curve, cancel, resume])

    drawn_key = gr.State(None)

    def start_line(current):
        """Follow the run Start run queued: the "queued" line gives way to its live state."""
        if not current or "run" not in current:
            return gr.skip(), gr.skip()
        run = lab.store.run(int(current["run"]))
        md = start_note_md(run, loop_job(run["id"]))
        if md == current.get("md"):
            return gr.skip(), gr.skip()
        return md, {"run": run["id"], "md": md}

    def tick(run_id, last_key, current):
        choices = run_choices(lab.store)
        state, cancel_u, resume_u = status(run_id)
        # build and redraw the curves only when a step was logged (no flicker, no work while idle)
        key = None if run_id is None else (int(run_id), lab.store.change_marker("train_logs", int(run_id)))
        if key == last_key:
            chart = gr.skip()
        else:
            chart = None if run_id is None else curves(run_id)
        # Start run waits while the selected run, or the one it started, is queued or running
        started = current.get("run") if current else None
        start_u = gr.update(interactive=not (busy_run(run_id) or busy_run(started)))
        line, current = start_line(current)
        return gr.update(choices=choices), state, chart, cancel_u, resume_u, key, start_u, line, current

    timer.tick(tick, [which, drawn_key, note], [which, progress, curve, cancel, resume, drawn_key, start, start_md,
                                                note], show_progress="hidden")
    return dict(run=which)
