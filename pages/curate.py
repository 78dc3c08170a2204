"""Curate: every completion with its filter scores; thresholds that recompute the automatic
verdicts live; approve / reject per row or in bulk (saved at once); continue a waiting run."""

from __future__ import annotations

import json
from collections import Counter

import gradio as gr
import pandas as pd

from pages.common import Lab, beside, friendly
from steerheal import jobs
from steerheal.errors import SteerhealError
from steerheal.filters import FilterConfig

COLUMNS = ["id", "alpha", "prompt", "text", "tail ppl", "repetition", "KL rmse", "auto", "human", "kept", "reasons"]
# Wide enough for each header on one line (with the sort icon); prompt, text and reasons share the rest.
COLUMN_WIDTHS = ["48px", "64px", "12%", "22%", "84px", "104px", "88px", "64px", "80px", "60px", "12%"]


def set_choices(lab: Lab) -> list[tuple[str, str]]:
    """Completion sets: lab batches and the rounds of heal runs, newest first."""
    out = []
    for row in lab.store.completion_sets():
        run_id, round_, count, status, stage = row["run_id"], row["round"], row["count"], row["status"], row["stage"]
        if row["kind"] == "batch":
            label = f"batch {run_id} · {count} completions"
        else:
            waiting = " · WAITING for review" if status == "waiting" and stage and f"round {round_}:" in stage else ""
            label = f"run {run_id} · round {round_} · {count} completions{waiting}"
        out.append((label, f"{run_id}:{round_}"))
    return out


def _check_map(row: dict) -> dict:
    scores = json.loads(row["scores"]) if row["scores"] else {}
    return {c["name"]: c for c in scores.get("checks", [])}, scores.get("kl", {})


def verdict_under(checks: dict, kl: dict, cfg: FilterConfig) -> tuple[bool, list[tuple[str, str]]]:
    """Recompute the automatic verdict from stored scores under new thresholds: (kept, [(check, reason)])."""
    failed = []
    if "tail_perplexity" in checks and not checks["tail_perplexity"]["score"] < cfg.max_tail_perplexity:
        failed.append(("tail perplexity",
                       f"tail perplexity {checks['tail_perplexity']['score']:.1f} ≥ {cfg.max_tail_perplexity:g}"))
    if "repetition" in checks and not checks["repetition"]["score"] < cfg.max_repetition:
        failed.append(("repetition", f"repetition {checks['repetition']['score']:.2f} ≥ {cfg.max_repetition:g}"))
    for name, on in (("narration", cfg.reject_narration), ("refusal", cfg.reject_refusal)):
        if on and name in checks and not checks[name]["passed"]:
            failed.append((name, checks[name]["reason"]))
    if "empty" in checks:
        failed.append(("empty", "empty completion"))
    if cfg.max_kl_rmse is not None and kl and not kl.get("rmse", 0.0) < cfg.max_kl_rmse:
        failed.append(("KL rmse", f"KL rmse {kl['rmse']:.2f} ≥ {cfg.max_kl_rmse:g}"))
    return not failed, failed


def table(rows: list[dict], cfg: FilterConfig) -> tuple[pd.DataFrame, dict[int, bool], str]:
    records, autos, dropped = [], {}, Counter()
    kept_n = 0
    for r in rows:
        checks, kl = _check_map(r)
        auto, failed = verdict_under(checks, kl, cfg)
        autos[r["id"]] = auto
        human = r["human_verdict"]
        kept = bool(human) if human is not None else auto
        kept_n += kept
        for check, _ in failed:
            dropped[check] += 1
        records.append({
            "id": r["id"], "alpha": r["alpha"], "prompt": r["prompt"], "text": r["text"],
            "tail ppl": round(checks.get("tail_perplexity", {}).get("score", float("nan")), 1),
            "repetition": round(checks.get("repetition", {}).get("score", float("nan")), 2),
            "KL rmse": round(kl.get("rmse", float("nan")), 3) if kl else None,
            "auto": "keep" if auto else "drop",
            "human": {None: "", 1: "approved", 0: "rejected"}[human],
            "kept": "✓" if kept else "✗", "reasons": "; ".join(reason for _, reason in failed)})
    frame = pd.DataFrame(records, columns=COLUMNS)
    human_n = sum(r["human_verdict"] is not None for r in rows)
    summary = (f"**{kept_n} kept**, {len(rows) - kept_n} dropped of {len(rows)} · {human_n} reviewed by hand")
    if dropped:
        summary += " · auto drops by reason: " + ", ".join(f"{k} {v}" for k, v in dropped.most_common())
    return frame, autos, summary


def build(lab: Lab, timer: gr.Timer, demo: gr.Blocks, saved: gr.BrowserState) -> None:
    """saved: the set under review and the thresholds, kept in the browser across a refresh."""
    gr.Markdown("## Curate\nEvery completion with its filter scores. Move the thresholds to see what the "
                "automatic filter would keep; click rows to select them, then approve or reject. A human "
                "verdict overrides the automatic one and is saved at once.")
    with gr.Row():
        which = gr.Dropdown(choices=[], label="Completion set", elem_id="curate-set", scale=3)
        reload_btn = gr.Button("Refresh sets", elem_id="curate-refresh", scale=0, min_width=140)
    with gr.Row():
        max_ppl = gr.Slider(2, 500, value=FilterConfig.max_tail_perplexity, step=1, label="Max tail perplexity",
                            elem_id="th-ppl")
        max_rep = gr.Slider(0.05, 1.0, value=FilterConfig.max_repetition, step=0.01, label="Max repetition",
                            elem_id="th-rep")
        max_kl = gr.Slider(0, 10, value=0, step=0.05, label="Max KL rmse", info="0 = off", elem_id="th-kl")
        narration = gr.Checkbox(True, label="Drop trait narration", elem_id="th-narr")
        refusal = gr.Checkbox(True, label="Drop refusals / AI boilerplate", elem_id="th-ref")
    summary = gr.Markdown(elem_id="curate-summary")
    grid = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, max_height=520, elem_id="curate-table",
                        column_widths=COLUMN_WIDTHS)
    selected = gr.State([])
    selected_md = gr.Markdown("No rows selected.", elem_id="curate-selected")
    with gr.Row():
        approve = gr.Button("Approve selected", variant="primary", elem_id="approve-btn")
        reject = gr.Button("Reject selected", variant="stop", elem_id="reject-btn")
        clear_sel = gr.Button("Clear selection", elem_id="clear-sel-btn")
    with gr.Row():
        approve_kept = gr.Button("Approve all the filter keeps", elem_id="approve-kept-btn")
        reject_dropped = gr.Button("Reject all the filter drops", elem_id="reject-dropped-btn")
        reset = gr.Button("Clear all human verdicts", elem_id="reset-btn")
        apply_th = gr.Button("Save these thresholds as the automatic verdicts", elem_id="apply-th-btn")
    curate_error = gr.HTML(elem_id="curate-error")  # why a button did nothing, until the next selection
    with gr.Row():
        continue_btn = gr.Button("Continue the run with these verdicts", variant="primary", visible=False,
                                 elem_id="continue-btn")
        continue_md = gr.Markdown()

    thresholds = [max_ppl, max_rep, max_kl, narration, refusal]

    def cfg_of(ppl, rep, kl, narr, ref) -> FilterConfig:
        return FilterConfig(max_tail_perplexity=float(ppl), max_repetition=float(rep),
                            max_kl_rmse=float(kl) if kl and float(kl) > 0 else None,
                            reject_narration=bool(narr), reject_refusal=bool(ref)).validate()

    def rows_of(key: str | None) -> list[dict]:
        if not key:
            return []
        run_id, round_ = (int(x) for x in key.split(":"))
        return lab.store.rows("completions", run_id, round_)

    def waiting(key: str | None) -> bool:
        if not key:
            return False
        run_id, round_ = (int(x) for x in key.split(":"))
        run = lab.store.run(run_id)
        return run["status"] == "waiting" and str(run["stage"]).startswith(f"round {round_}:")

    @friendly
    def render(key, *th):
        frame, _, text = table(rows_of(key), cfg_of(*th))
        return frame, text, gr.update(visible=waiting(key))

    def sets(current):
        choices = set_choices(lab)
        values = [v for _, v in choices]
        value = current if current in values else (values[0] if values else None)
        return gr.update(choices=choices, value=value)

    @friendly
    def select(sel: list, evt: gr.SelectData, frame: pd.DataFrame):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        cid = int(frame.iloc[row]["id"])
        sel = [s for s in sel if s != cid] if cid in sel else sel + [cid]
        return sel, (f"Selected: {', '.join(map(str, sel))}" if sel else "No rows selected.")

    @friendly
    def mark(verdict, sel, key, *th):
        if not sel:
            raise SteerhealError("Select rows first: click them in the table.")
        lab.store.set_human_verdict(sel, verdict)
        frame, _, text = table(rows_of(key), cfg_of(*th))
        return frame, text, [], "No rows selected."

    @friendly
    def bulk(kind, key, *th):
        rows = rows_of(key)
        if not rows:
            raise SteerhealError("Pick a completion set first.")
        _, autos, _ = table(rows, cfg_of(*th))
        if kind == "approve":
            lab.store.set_human_verdict([i for i, ok in autos.items() if ok], True)
        elif kind == "reject":
            lab.store.set_human_verdict([i for i, ok in autos.items() if not ok], False)
        elif kind == "reset":
            lab.store.set_human_verdict(list(autos), None)
        elif kind == "apply":
            lab.store.set_auto_verdicts(autos)
        frame, _, text = table(rows_of(key), cfg_of(*th))
        return frame, text

    @friendly
    def continue_run(key):
        if not waiting(key):
            raise SteerhealError("This set does not belong to a run that is waiting for review.")
        run_id, round_ = (int(x) for x in key.split(":"))
        kept = [r for r in rows_of(key)
                if (r["human_verdict"] if r["human_verdict"] is not None else r["auto_verdict"])]
        from steerheal.heal import MIN_EXAMPLES

        if len(kept) < MIN_EXAMPLES:
            raise SteerhealError(f"Only {len(kept)} completions are kept; heal needs at least {MIN_EXAMPLES}. "
                                 "Approve more.")
        lab.store.mark_curated(run_id, round_)
        jid = jobs.submit(lab.store, "loop", dict(run_id=run_id), run_id=run_id)
        return f"Run {run_id} continues (job {jid}) with {len(kept)} kept completions: see the Heal page.", \
            gr.update(visible=False)

    which.change(render, [which, *thresholds], [grid, summary, continue_btn]).then(
        lambda: ([], "No rows selected."), None, [selected, selected_md])
    for th in thresholds:
        th.change(render, [which, *thresholds], [grid, summary, continue_btn], show_progress="hidden")
    reload_btn.click(sets, which, which)
    grid.select(select, [selected, grid], [selected, selected_md])
    marked = [grid, summary, selected, selected_md, curate_error]
    approve.click(beside(lambda *a: mark(True, *a), 4, "Not saved"), [selected, which, *thresholds], marked)
    reject.click(beside(lambda *a: mark(False, *a), 4, "Not saved"), [selected, which, *thresholds], marked)
    clear_sel.click(lambda: ([], "No rows selected."), None, [selected, selected_md])
    for btn, kind in ((approve_kept, "approve"), (reject_dropped, "reject"), (reset, "reset"), (apply_th, "apply")):
        btn.click(beside(lambda key, *th, kind=kind: bulk(kind, key, *th), 2, "Not saved"), [which, *thresholds],
                  [grid, summary, curate_error])
    continue_btn.click(beside(continue_run, 2, "Not continued"), which, [continue_md, continue_btn, curate_error])
    gr.on([which.change, grid.select, clear_sel.click], lambda: "", None, curate_error, queue=False,
          show_progress="hidden")

    def tick(current):
        """New sets appear on their own (a batch finishing, a run waiting for review)."""
        choices = set_choices(lab)
        values = [v for _, v in choices]
        if current in values:
            return gr.update(choices=choices)
        return gr.update(choices=choices, value=values[0] if values else None)

    timer.tick(tick, which, which, show_progress="hidden")

    def keep(key, *values):
        """Remember the set and thresholds; skip when nothing changed, since writing a BrowserState
        from a .change listener fires that .change again."""
        *th, before = values
        now = {"set": key, "thresholds": list(th)}
        return gr.skip() if now == before else now

    def restore(before):
        """On page load: the set under review and the thresholds from before the refresh."""
        choices = set_choices(lab)
        values = [v for _, v in choices]
        before = before if isinstance(before, dict) else {}
        key = before.get("set") if before.get("set") in values else (values[0] if values else None)
        th = before.get("thresholds")
        th = th if isinstance(th, list) and len(th) == len(thresholds) else [gr.skip()] * len(thresholds)
        return gr.update(choices=choices, value=key), *th

    demo.load(restore, saved, [which, *thresholds], show_progress="hidden")
    gr.on([which.change, *(t.change for t in thresholds)], keep, [which, *thresholds, saved], saved,
          show_progress="hidden")
