"""Heal's form: its values as a validated run config, a stored run's settings as the form shows
them, and the lines above Start run (what the run will use, which tinymfv data)."""

from __future__ import annotations

import html
import os
from dataclasses import replace

from pages.common import as_float, as_int, clock, count, pair_label, parse_floats, preset_for, vector_summary
from steerheal.backtrack import BacktrackConfig
from steerheal.errors import SteerhealError
from steerheal.evals.tinymfv_data import HUB_DATASET, demo_set, load_vignettes
from steerheal.heal import MIN_EXAMPLES, HealConfig
from steerheal.loop import RunConfig
from steerheal.presets import default_contexts, persona_presets, read_lines

MIN_ROUNDS = 1
MIN_COMPLETIONS = MIN_EXAMPLES  # heal trains on the kept completions and refuses fewer than this


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


def loop_settings(config: dict) -> dict:
    """A stored run's Loop settings as the form shows them (keyed like the form's fields), so
    picking an old run shows its own settings rather than the defaults."""
    d, heal = RunConfig(), dict(config.get("heal") or {})
    h = HealConfig(rank=16, lora_alpha=32, epochs=2)

    def get(key, default):
        value = config.get(key)
        return default if value is None else value

    alphas = get("alphas", d.alphas)
    backtrack = config.get("backtrack") or {}
    target_kind = "kept share" if config.get("target_kept") is not None else "KL budget"
    target_value = config.get("target_kept") if config.get("target_kept") is not None else get("target_kl", 1.0)
    return dict(rounds=get("rounds", d.rounds),
                alphas=alphas if alphas == "auto" else ", ".join(f"{float(a):g}" for a in alphas),
                target_kind=target_kind, target_value=target_value, backtrack=bool(backtrack),
                backtrack_kl=backtrack.get("threshold", 1.0), backtrack_window=backtrack.get("window", 8),
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


def run_config_from_form(model_name: str, rounds_v, alphas_v, n_v, tokens_v, curation_v, agg_v, tau_v, lam_v,
                         power_v, ref_v, rank_v, lr_v, epochs_v, limit_v, think_v, probe_v, seed_v, random_v, pos_v,
                         neg_v, contexts_v, layers_v, tinymfv_v="auto", axis_limit_v=0, drift_prompts_v=32,
                         drift_tokens_v=32, ceiling_v=2.0, items_v=None, target_kind_v="KL budget",
                         target_value_v=1.0, backtrack_v=False, backtrack_kl_v=1.0, backtrack_window_v=8) -> RunConfig:
    """The Heal form's values as a validated RunConfig (a SteerhealError says what to change).
    tinymfv "auto" with a number of rows asks for tinymfv on that many rows (a subset). Strengths
    "auto" calibrate alpha each round to the target (a KL budget or a kept share)."""
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
    dose: dict = {}
    if str(alphas_v or "").strip().lower() == "auto":
        value = as_float(target_value_v, "Target")
        dose = dict(alphas="auto", **({"target_kept": value} if target_kind_v == "kept share" else {"target_kl": value}))
    else:
        dose = dict(alphas=tuple(parse_floats(alphas_v, "strength")))
    backtrack = None
    if backtrack_v:
        backtrack = BacktrackConfig(threshold=as_float(backtrack_kl_v, "Replay above (nats)"),
                                    window=as_int(backtrack_window_v, "Replay window", 1, 8192))
    return RunConfig(rounds=rounds, **dose, backtrack=backtrack,
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
