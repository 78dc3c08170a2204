"""Heal: configure and launch the multi-round loop as a background job; follow it live (stage,
round, step, loss and barrier curves); cancel and resume. The form's logic is in heal_form, the
progress lines and curves in heal_status."""

from __future__ import annotations

import html
import logging
from dataclasses import replace

import gradio as gr

from pages.common import Lab, friendly, job_status_md, run_choices
from pages.heal_form import (MIN_COMPLETIONS, MIN_ROUNDS, loop_settings, run_config_from_form, run_uses_html,
                             start_error_md, tinymfv_data_html)
from pages.heal_status import BUSY, RESUMABLE, loss_chart, run_stage_text, stage_parts, start_note_md
from pages import sweeps as sweep_section
from pages.science import stop_note
from steerheal import jobs
from steerheal.errors import SteerhealError
from steerheal.heal import HealConfig
from steerheal.loop import RunConfig, start_run
from steerheal.presets import persona_presets

log = logging.getLogger("steerheal.app")


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
            alphas = gr.Textbox(", ".join(f"{a:g}" for a in d.alphas), label="Strengths α", elem_id="heal-alphas",
                                info="numbers, or auto: calibrate α each round to the target below")
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
        with gr.Row():
            target_kind = gr.Dropdown(["KL budget", "kept share"], value="KL budget", label="With auto: target",
                                      elem_id="heal-target-kind", info="p95 per-token KL to base (nats), or the "
                                                                       "share of completions the filters keep")
            target_value = gr.Number(1.0, label="Target value", elem_id="heal-target-value")
            backtrack = gr.Checkbox(False, label="Backtrack and replay", elem_id="heal-backtrack",
                                    info="decode a window again at α/2 when its KL to base is too high")
            backtrack_kl = gr.Number(1.0, label="Replay above (nats, window mean)", elem_id="heal-backtrack-kl")
            backtrack_window = gr.Number(8, label="Replay window (tokens)", precision=0,
                                         elem_id="heal-backtrack-window")
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
              personas["items"], target_kind, target_value, backtrack, backtrack_kl, backtrack_window]

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
                    drift_tokens=drift_tokens, incoherence_ceiling=ceiling, target_kind=target_kind,
                    target_value=target_value, backtrack=backtrack, backtrack_kl=backtrack_kl,
                    backtrack_window=backtrack_window)

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
    sweep_parts = sweep_section.build(lab, timer, fields, lambda *values: replace(
        run_config_from_form(lab.preview.model_name, *values), load_in_4bit=lab.preview.load_in_4bit))
    return dict(run=which, **sweep_parts)
