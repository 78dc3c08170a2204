"""Science commands: the axis eval on one model, and a run's answers to the method's questions."""

from __future__ import annotations

import json
from pathlib import Path

from steerheal.cli.common import command, finite_float, load_from_args, model_args, stage_from_args
from steerheal.errors import SteerhealError


@command("axis")
def cmd_axis(args) -> int:
    from steerheal.evals.axis import bundled_items, check_no_overlap, evaluate_axis, load_items, select
    from steerheal.presets import generation_prompts, persona_pair
    from steerheal.progress import tqdm_progress
    from steerheal.vectors import SteeringVector

    if (args.vector is None) != (args.alpha is None):
        raise SteerhealError("A steered axis eval needs both --vector FILE and --alpha A.")
    if args.limit is not None and args.limit < 2:
        raise SteerhealError(f"--limit {args.limit}: score at least 2 items (an interval needs them).")
    if args.items:
        items = load_items(args.items)
        check_no_overlap(items, generation_prompts(None))
        source = str(args.items)
    else:
        persona_pair(args.pair)  # an unknown preset fails here, naming the presets
        items = bundled_items(args.pair)
        check_no_overlap(items, generation_prompts(args.pair))
        source = f"bundled {args.pair}"
    items = select(items, None if args.split == "all" else args.split)[: args.limit]
    if args.vector is not None and not args.vector.is_file():
        raise SteerhealError(f"Vector file {str(args.vector)!r} does not exist.")
    vector = SteeringVector.load(args.vector) if args.vector else None
    lm = load_from_args(args)
    steer_cfg, persona, stage = stage_from_args(args, lm, vector)
    with tqdm_progress(f"axis eval ({len(items)} items)", unit="item") as progress:
        result = evaluate_axis(lm, items, stage=stage, vector=vector, steer_cfg=steer_cfg, persona_prompt=persona,
                               progress=progress)
    out = {**result.summary(), "stage": stage, "items": source, "split": args.split,
           "seconds": result.meta["seconds"]}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"axis eval, {source} ({args.split}), stage {stage}: mean {result.mean:+.4f} "
          f"[{result.ci_low:+.4f}, {result.ci_high:+.4f}] (95% bootstrap), {result.share_positive:.0%} of "
          f"{result.n} items above 0, {result.meta['seconds']:.0f}s")
    return 0


@command("summary")
def cmd_summary(args) -> int:
    from steerheal.store import Store
    from steerheal.summary import run_summary

    store = Store(args.db)
    summary = run_summary(store, args.run_id)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"run {args.run_id}: {summary['status']}" + (f" ({summary['stop_reason']})" if summary["stop_reason"] else ""))
    print(f"{'round':>5} {'stage':>9} {'axis':>8} {'95% interval':>18} {'incoh.':>7} {'tinymfv coh':>11}")
    for row in summary["table"]:
        axis = f"{row['axis']:+8.3f}" if row["axis"] is not None else f"{'-':>8}"
        band = f"[{row['axis_low']:+.3f}, {row['axis_high']:+.3f}]" if row["axis"] is not None else "-"
        inc = f"{row['incoherence']:7.3f}" if row["incoherence"] is not None else f"{'-':>7}"
        coh = f"{row['tinymfv_coherence']:11.3f}" if row["tinymfv_coherence"] is not None else f"{'-':>11}"
        print(f"{row['round']:>5} {row['stage']:>9} {axis} {band:>18} {inc} {coh}")
    for c in summary["calibrations"]:
        what = "p95 per-token KL" if c["kind"] == "kl" else "kept share"
        print(f"round {c['round']}: alpha calibrated to {c['alpha']:.4g} ({what} {c['measure']:.3g}, target "
              f"{c['target']:g}, {c['evaluations']} evaluations{'' if c['reached'] else ', NOT reached'}); "
              f"strengths {', '.join(f'{a:g}' for a in c['alphas'])}")
    print()
    for a in summary["questions"]:
        print(f"{a['question']}  ->  {a['verdict'].upper()}: {a['because']}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("axis", help="the axis eval: continuation-likelihood trait score with a 95%% interval")
    model_args(p)
    p.add_argument("--items", type=Path, help="a JSONL items file: one {prompt, pos, neg} per line")
    p.add_argument("--pair", default="care-over-authority", help="the preset whose bundled items to use "
                                                                 "(care-over-authority, love-humanity)")
    p.add_argument("--split", default="eval", choices=["eval", "dev", "all"], help="which items (default: held-out eval)")
    p.add_argument("--limit", type=int, help="score only the first N items of the split")
    p.add_argument("--vector", type=Path, help="score steered with this vector (needs --alpha)")
    p.add_argument("--alpha", type=finite_float, help="steering strength for --vector")
    p.add_argument("--layers", default="0.45-0.55")
    p.add_argument("--persona-prompt", action="store_true", help="prompting baseline: the positive persona as system message")
    p.add_argument("--json", action="store_true", help="last line: one JSON object (mean, ci_low, ci_high, "
                                                       "share_positive, n, ...)")

    p = sub.add_parser("summary", help="a run's per-round numbers and its answers to the method's questions")
    p.add_argument("run_id", type=int, metavar="RUN_ID")
    p.add_argument("--db", default="runs.db")
    p.add_argument("--json", action="store_true")
