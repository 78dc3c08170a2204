"""A sweep's runs compared per setting: the seeds of one setting are pooled, and each headline
number (trait at the first and last healed round, incoherence over the loop) gets a 95% t
interval over seeds. The seed's table ("barrier | trait start -> end | incoherence over the loop
| outcome") is this comparison printed for the barrier aggregates."""

from __future__ import annotations

import math

from steerheal.stats import Interval, seed_interval
from steerheal.store import Store
from steerheal.summary import stage_table
from steerheal.sweep_spec import label
from steerheal.sweeps import sweep, sweep_runs

SEED_AXES = ("seed",)


def setting_of(point: dict) -> dict:
    """The varied settings but the seed: what the seeds of one setting share."""
    return {k: v for k, v in point.items() if k not in SEED_AXES}


def run_headline(store: Store, run_id: int) -> dict:
    """One run's trait (axis score) and incoherence at its base, first and last healed rounds."""
    table = stage_table(store, run_id)
    healed = [r for r in table if r["stage"] == "healed"]
    base = next((r for r in table if r["stage"] == "base"), None)

    def pick(row, key):
        return None if row is None else row[key]

    first, last = (healed[0], healed[-1]) if healed else (None, None)
    return dict(run_id=run_id, rounds=len(healed), trait_base=pick(base, "axis"),
                trait_start=pick(first, "axis"), trait_end=pick(last, "axis"),
                incoherence_base=pick(base, "incoherence"), incoherence_start=pick(first, "incoherence"),
                incoherence_end=pick(last, "incoherence"),
                incoherence_max=max((r["incoherence"] for r in healed if r["incoherence"] is not None), default=None),
                auth_start=pick(first, "auth_nats"), auth_end=pick(last, "auth_nats"),
                per_round=[dict(round=r["round"], trait=r["axis"], incoherence=r["incoherence"]) for r in healed])


def _iv(values) -> Interval:
    return seed_interval([v for v in values if v is not None])


def outcome(trait_change: Interval, incoherence_change: Interval, stopped: int, n: int) -> str:
    """The setting's result in words, from intervals over seeds (never from one seed's point)."""
    parts = []
    if stopped:
        parts.append(f"stopped early in {stopped} of {n} seeds")
    if n < 2:
        parts.append("one seed: no interval")
    side = trait_change.side_of(0.0) if n >= 2 else 0
    parts.append({1: "trait moves up", -1: "trait moves down", 0: "trait change not distinguishable from 0"}[side])
    rise = incoherence_change.side_of(0.0) if n >= 2 else 0
    parts.append({1: "incoherence rises", -1: "incoherence falls", 0: "incoherence flat within noise"}[rise])
    return "; ".join(parts)


def _finished(runs: list[dict]) -> list[dict]:
    """The runs that count for a setting: completed, with a healed round measured."""
    return [r for r in runs if r["status"] == "completed" and r["trait_end"] is not None]


def compare(store: Store, sweep_id: int) -> dict:
    """Per setting (seeds pooled): intervals of the headline numbers, outcome words, and every
    run's per-round trait and incoherence for the chart."""
    info = sweep(store, sweep_id)
    groups: dict[str, dict] = {}
    for run in sweep_runs(store, sweep_id):
        setting = setting_of(run["point"])
        key = label(setting)
        group = groups.setdefault(key, dict(setting=setting, label=key, runs=[]))
        group["runs"].append({**run_headline(store, run["id"]), "status": run["status"],
                              "stop_reason": run.get("stop_reason"), "seed": run["seed"]})
    rows = []
    for group in groups.values():
        done = _finished(group["runs"])
        change = _iv([r["trait_end"] - r["trait_start"] for r in done])
        inc_change = _iv([r["incoherence_end"] - r["incoherence_start"] for r in done
                          if r["incoherence_end"] is not None and r["incoherence_start"] is not None])
        stopped = sum(bool(r["stop_reason"]) for r in done)
        rows.append(dict(
            label=group["label"], setting=group["setting"], n_runs=len(group["runs"]), n_done=len(done),
            trait_start=_iv([r["trait_start"] for r in done]).to_dict(),
            trait_end=_iv([r["trait_end"] for r in done]).to_dict(), trait_change=change.to_dict(),
            incoherence_start=_iv([r["incoherence_start"] for r in done]).to_dict(),
            incoherence_end=_iv([r["incoherence_end"] for r in done]).to_dict(),
            incoherence_max=_iv([r["incoherence_max"] for r in done]).to_dict(),
            incoherence_change=inc_change.to_dict(),
            trait_base=_iv([r["trait_base"] for r in done]).to_dict(),
            outcome=outcome(change, inc_change, stopped, len(done)) if done else "no finished run yet",
            runs=group["runs"]))
    return dict(sweep_id=sweep_id, name=info["name"], state=info["state"], settings=rows,
                versus=versus_first(rows))


def versus_first(rows: list[dict]) -> list[dict]:
    """Each later setting against the first, paired by seed (the seeds both finished): the
    difference at the last healed round, with a 95% t interval over those seeds. Pairing removes
    what a seed does to both settings alike, so it resolves differences the per-setting intervals
    overlap on."""
    if len(rows) < 2:
        return []

    def by_seed(row):
        return {r["seed"]: r for r in _finished(row["runs"])}

    first = by_seed(rows[0])
    out = []
    for row in rows[1:]:
        theirs = by_seed(row)
        seeds = sorted(set(first) & set(theirs))

        def diff(key):
            return seed_interval([theirs[s][key] - first[s][key] for s in seeds
                                  if theirs[s][key] is not None and first[s][key] is not None]).to_dict()
        out.append(dict(label=row["label"], against=rows[0]["label"], seeds=seeds,
                        trait_end=diff("trait_end"), incoherence_end=diff("incoherence_end")))
    return out


def _fmt(iv: dict, signed: bool = False) -> str:
    if iv["n"] == 0 or not math.isfinite(iv["value"]):
        return "-"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    if iv["n"] < 2:
        return fmt.format(iv["value"])
    return f"{fmt.format(iv['value'])} [{fmt.format(iv['low'])}, {fmt.format(iv['high'])}]"


def table_text(result: dict) -> str:
    """The comparison as a Markdown table (95% t intervals over seeds in brackets)."""
    lines = ["| setting | seeds done | trait start -> end | incoherence over the loop | outcome |",
             "|---|---|---|---|---|"]
    for row in result["settings"]:
        lines.append(f"| {row['label']} | {row['n_done']}/{row['n_runs']} | {_fmt(row['trait_start'], True)} -> "
                     f"{_fmt(row['trait_end'], True)} | {_fmt(row['incoherence_start'])} -> "
                     f"{_fmt(row['incoherence_end'])} (max {_fmt(row['incoherence_max'])}) | {row['outcome']} |")
    if result.get("versus"):
        lines.append("")
        lines.extend(versus_text(vs) for vs in result["versus"])
    return "\n".join(lines)


def seed_list(seeds: list) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds)


def versus_text(vs: dict) -> str:
    if not vs["seeds"]:
        return f"{vs['label']} vs {vs['against']}: no seed finished under both"
    return (f"{vs['label']} minus {vs['against']}, paired over {seed_list(vs['seeds'])}: trait at the end "
            f"{_fmt(vs['trait_end'], True)}, incoherence at the end {_fmt(vs['incoherence_end'], True)}")
