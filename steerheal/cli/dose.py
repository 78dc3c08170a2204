"""Dose commands: the dose curve of a vector, and the strength that hits a target."""

from __future__ import annotations

import json
from pathlib import Path

from steerheal.cli.common import (command, extract_with_progress, finite_float, load_from_args, model_args,
                                  pair_and_contexts, persona_args)
from steerheal.errors import SteerhealError


def parse_alphas(text: str | None):
    from steerheal.dose import DEFAULT_GRID, check_grid

    if text is None:
        return list(DEFAULT_GRID)
    try:
        values = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise SteerhealError(f"--alphas {text!r}: give numbers separated by commas, e.g. -2,0,1,2,4.") from None
    return check_grid(values)


def target_from_args(args):
    from steerheal.dose import DoseTarget

    if args.target_kl is not None and args.target_kept is not None:
        raise SteerhealError("Give one target: --target-kl (a KL budget) or --target-kept (a kept share).")
    if args.target_kl is None and args.target_kept is None:
        return None
    kind, value = ("kl", args.target_kl) if args.target_kl is not None else ("kept", args.target_kept)
    return DoseTarget(kind=kind, value=value, sign=-1 if args.sign == "-" else 1,
                      max_evaluations=args.max_evaluations).validate()


@command("dose")
def cmd_dose(args) -> int:
    from steerheal.config import LayerBand
    from steerheal.dose import DoseConfig, DoseMeter, calibrate, dev_items, dose_curve
    from steerheal.presets import generation_prompts
    from steerheal.progress import tqdm_progress
    from steerheal.vectors import SteeringVector

    grid = parse_alphas(args.alphas)
    target = target_from_args(args)
    cfg = DoseConfig(layers=args.layers, n_prompts=args.prompts, max_new_tokens=args.tokens, seed=args.seed,
                     axis_items=args.axis_items, drift_prompts=args.drift_prompts).validate()
    LayerBand(args.layers).resolve(100_000)
    if args.vector is not None and not args.vector.is_file():
        raise SteerhealError(f"Vector file {str(args.vector)!r} does not exist.")
    pair, contexts = pair_and_contexts(args)
    items = dev_items(args.pair if args.pos is None and args.neg is None else None, args.items)
    lm = load_from_args(args)
    vector = SteeringVector.load(args.vector) if args.vector else extract_with_progress(lm, pair, contexts)
    prompts = generation_prompts(args.pair if pair.name != "custom" else None)
    meter = DoseMeter(lm, vector, prompts, cfg, items=items)
    with tqdm_progress(f"dose curve ({len(grid)} alphas)", unit="alpha") as progress:
        points = dose_curve(meter, grid, on_point=lambda pts: progress(sum(p.grid for p in pts), len(grid)))
    found = None
    if target is not None:
        with tqdm_progress(f"calibrating to {target.label}", unit="eval") as progress:
            found = calibrate(meter, target, grid=grid,
                              on_point=lambda pts: progress(len(pts) - len(grid), target.max_evaluations))
        points = found.points
    out = {"points": [p.to_dict() for p in points], "layers": args.layers, "n_prompts": len(meter.prompts),
           "max_new_tokens": cfg.max_new_tokens, "vector": str(args.vector) if args.vector else f"extracted ({pair.name})"}
    if found is not None:
        out.update(alpha=found.alpha, measure=found.measure, target={"kind": target.kind, "value": target.value,
                   "sign": target.sign, "tolerance": target.tolerance_abs()}, evaluations=found.evaluations,
                   reached=found.reached)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{'alpha':>7} {'KL mean':>8} {'KL p95':>7} {'>1 nat':>7} {'kept':>6} {'axis (dev)':>22} {'incoherence':>12}")
    for p in points:
        axis = (f"{p.axis['mean']:+.3f} [{p.axis['ci_low']:+.2f},{p.axis['ci_high']:+.2f}]" if p.axis else "-")
        inc = f"{p.incoherence['value']:.3f}" if p.incoherence else "-"
        mark = "" if p.grid else "  (calibration)"
        print(f"{p.alpha:7.3g} {p.kl_mean:8.3f} {p.kl_p95:7.3f} {p.kl_share_over_1:7.1%} {p.kept_share:6.0%} "
              f"{axis:>22} {inc:>12}{mark}")
    if found is not None:
        verb = "reached" if found.reached else "NOT reached (closest shown)"
        print(f"\n{target.label}: {verb} at alpha {found.alpha:.4g} ({found.measure:.3g}; tolerance "
              f"±{target.tolerance_abs():.3g}) after {found.evaluations} calibration evaluations")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("dose", help="the dose curve of a vector (KL, kept share, axis score, incoherence per alpha), "
                                    "and the alpha that hits a target")
    model_args(p)
    persona_args(p)
    p.add_argument("--vector", type=Path, help="a saved vector (default: extract the persona pair now)")
    p.add_argument("--layers", default="0.45-0.55", help="layer band: fractions 0.45-0.55 or indices 13-15")
    p.add_argument("--alphas", help="the grid, comma-separated (default -4,-2,0,1,2,4,8,16)")
    p.add_argument("--target-kl", type=finite_float, help="calibrate: p95 per-token KL to base = X nats (e.g. 1)")
    p.add_argument("--target-kept", type=finite_float, help="calibrate: share S of completions kept (e.g. 0.5)")
    p.add_argument("--sign", default="+", choices=["+", "-"], help="the side of alpha to calibrate (default +)")
    p.add_argument("--max-evaluations", type=int, default=8, help="calibration budget between grid points")
    p.add_argument("--items", type=Path, help="axis items (JSONL) for a pair of your own; the dev split is used")
    p.add_argument("--prompts", type=int, default=16, help="generation prompts per point (default 16)")
    p.add_argument("--tokens", type=int, default=32, help="tokens per completion (default 32)")
    p.add_argument("--axis-items", type=int, default=16, help="dev axis items per grid point (0: skip)")
    p.add_argument("--drift-prompts", type=int, default=8, help="neutral prompts for incoherence per point (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="last line: one JSON object with the points and, with a "
                                                       "target, alpha, measure and evaluations")
