"""A Hugging Face model card (README.md) for an exported round: what the model is, how it was
made (the run's full config), and what it scores per round, read from the store."""

from __future__ import annotations

import json

from steerheal.evals.tinymfv_data import demo_data_note
from steerheal.store import Store


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(store: Store, run_id: int, round_: int) -> str:
    run = store.run(run_id)
    cfg = run["config"]
    evals = sorted(store.rows("evals", run_id), key=lambda e: (e["round"], e["stage"]))
    probes = store.rows("probes", run_id, round_)
    base_model = run["model_id"]
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: transformers",
        "tags:",
        "  - steerheal",
        "  - steering",
        "  - lora",
        "---",
        "",
        f"# {base_model}, healed for {round_ + 1} round(s) with steerheal",
        "",
        f"Run {run_id}, round {round_}: the base model with the LoRA adapters of rounds 0..{round_} folded in. "
        f"Each round re-extracted a steering vector for the persona pair `{cfg.get('pair')}`, generated "
        f"{cfg.get('n_completions')} steered completions at strengths {cfg.get('alphas')}, kept those that passed "
        "the filters, and distilled them into a LoRA adapter trained with NLL plus a barrier on the KL divergence "
        f"to the {cfg.get('heal', {}).get('ref')} model (aggregated by {cfg.get('heal', {}).get('agg')}, "
        f"tau {cfg.get('heal', {}).get('tau')}).",
        "",
    ]
    if cfg.get("load_in_4bit"):
        lines += ["The adapters were trained against a 4-bit base; folded into the full-precision weights they are "
                  "close to, not identical with, the model that was evaluated.", ""]
    lines += ["## tinymfv (forced choice, moral foundations)", "",
              "| round | stage | auth_nats | care_nats | coherence | top1_acc |", "|---|---|---|---|---|---|"]
    for e in evals:
        if e["round"] <= round_:
            label = "before" if e["round"] < 0 else e["round"]
            lines.append(f"| {label} | {e['stage']} | {_fmt(e['auth_nats'])} | {_fmt(e['care_nats'])} | "
                         f"{_fmt(e['coherence'])} | {_fmt(e['top1_acc'])} |")
    demo = demo_data_note(evals)
    if demo:
        lines += ["", f"**Demo data.** {demo}"]
    base = [e for e in evals if e["stage"] == "base"]
    if base and base[0]["coherence"] < 0.85:
        lines += ["", f"Base coherence is {base[0]['coherence']:.3f} (< 0.85): the model mostly fails the answer "
                  "format, so these foundation numbers are not meaningful."]
    if probes:
        lines += ["", f"## Probe answers at round {round_} (greedy)", ""]
        for p in probes:
            answer = p["answer"].replace("\n", " ").strip()
            lines += [f"**{p['prompt']}**", "", f"> {answer}", ""]
    lines += ["", "## Run config", "", "```json", json.dumps(cfg, indent=2, sort_keys=True), "```", "",
              f"Library versions: {json.dumps(run['versions'], sort_keys=True)}; steerheal commit {run['git_commit']}.",
              ""]
    return "\n".join(lines)
