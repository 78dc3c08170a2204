"""Sweep commands: sweep (start or resume one, on the local or the Ray backend), sweeps (list, cancel)."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

from steerheal.cli.common import command
from steerheal.errors import SteerhealError


def _pairs(items: list[str] | None, flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise SteerhealError(f"{flag} {item!r}: write NAME=VALUE, e.g. {flag} agg=mean,rmse.")
        out.append((name.strip(), value))
    return out


def spec_from_args(args):
    from steerheal.sweep_presets import preset
    from steerheal.sweep_spec import SweepSpec, parse_value

    if args.config and args.preset:
        raise SteerhealError("Give --config or --preset, not both.")
    if args.preset:
        spec = preset(args.preset)
    elif args.config:
        if not args.config.is_file():
            raise SteerhealError(f"Sweep file {str(args.config)!r} does not exist.")
        try:
            spec = SweepSpec.from_dict(tomllib.loads(args.config.read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as err:
            raise SteerhealError(f"{args.config}: not valid TOML ({err}).") from None
    else:
        spec = SweepSpec()
    base = dict(spec.base)
    for name, value in _pairs(args.set, "--set"):
        base[name] = parse_value(value)
    axes = dict(spec.axes)
    for name, values in _pairs(args.axis, "--axis"):
        parsed = parse_value(f"[{values}]")
        axes[name] = parsed if isinstance(parsed, list) else [parse_value(v) for v in values.split(",") if v]
    if spec.combinations and args.axis:
        raise SteerhealError("--axis adds to a grid: this sweep lists its runs ([[runs]]).")
    if not spec.combinations and not axes:
        raise SteerhealError("The sweep varies nothing: give --config sweep.toml with an [axes] table, "
                             "--preset seed-table, or --axis NAME=V1,V2.")
    return SweepSpec(base=base, axes=axes, combinations=spec.combinations, name=args.name or spec.name)


class Bars:
    """One bar for the sweep (runs ended / all) and one per run in flight with its stage."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.main = tqdm(total=total, desc="sweep", unit="run", file=sys.stderr, dynamic_ncols=True)
        self.running: dict[int, object] = {}

    def __call__(self, snap: dict) -> None:
        ended = sum(r["status"] in ("completed", "failed", "cancelled", "interrupted") for r in snap["runs"])
        self.main.n = ended
        self.main.refresh()
        live = {r["id"]: r for r in snap["runs"] if r["status"] == "running"}
        for run_id in list(self.running):
            if run_id not in live:
                self.running.pop(run_id).close()
        for run_id, run in live.items():
            bar = self.running.get(run_id)
            if bar is None:
                bar = self.running[run_id] = self._tqdm(total=0, file=sys.stderr, dynamic_ncols=True, leave=False,
                                                        position=len(self.running) + 1,
                                                        bar_format="{desc}")
            prog = run.get("progress") or {}
            where = f"round {prog['round']}: " if prog.get("round") is not None else ""
            step = f" {prog['done']}/{prog['total']}" if prog.get("total") and prog.get("done") is not None else ""
            bar.set_description_str(f"  run {run_id} ({run['label']}) {where}{prog.get('stage') or run['stage']}{step}")

    def close(self) -> None:
        for bar in self.running.values():
            bar.close()
        self.main.close()


@command("sweep")
def cmd_sweep(args) -> int:
    if args.max_parallel is not None and args.max_parallel < 1:
        raise SteerhealError(f"--max-parallel must be at least 1, got {args.max_parallel}.")
    if args.retries < 0:
        raise SteerhealError(f"--retries must be 0 or more, got {args.retries}.")
    spec = None
    if args.resume is None:
        spec = spec_from_args(args)
        spec.expand(yes=args.yes)  # every run checked before Ray starts or anything is stored
    if args.backend is None:  # a resumed sweep keeps the backend it was started on
        args.backend = "local"
        if args.resume is not None:
            from steerheal import sweeps
            from steerheal.store import Store

            args.backend = sweeps.sweep(Store(args.db), args.resume)["backend"]
    started_ray = False
    if args.backend == "ray" and not args.no_wait:
        from steerheal.sweeps_ray import connect

        _, started_ray, seconds = connect()  # no Ray, or a cluster out of reach: nothing stored
        if started_ray:
            print(f"Ray: local cluster started in {seconds:.1f} s", file=sys.stderr)
    try:
        return _sweep(args, spec)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _sweep(args, spec) -> int:
    from steerheal import sweeps
    from steerheal.store import Store

    store = Store(args.db)
    if args.resume is not None:
        sweep_id = args.resume
        sweeps.sweep(store, sweep_id)
        run_ids = sweeps.reopen(store, sweep_id)
    else:
        sweep_id, run_ids = sweeps.create_sweep(store, spec, args.backend, yes=args.yes,
                                                max_parallel=args.max_parallel, preset=args.preset)
    print(f"sweep {sweep_id}: runs {', '.join(map(str, run_ids)) or 'none left to do'}", flush=True)
    if args.no_wait:
        if args.backend == "ray":
            raise SteerhealError("--no-wait queues runs for the local workers: the Ray backend needs this command "
                                 "to drive it (run it in the background, or use --backend local).")
        from steerheal.sweeps_local import submit_runs

        submit_runs(store, sweep_id)
        print(f"queued: the app's workers (or `steerheal worker --db {args.db}`) run them")
        return 0
    sweeps.set_status(store, sweep_id, "running")
    bars = Bars(len(sweeps.sweep_runs(store, sweep_id)))
    try:
        if args.backend == "ray":
            from steerheal.sweeps_ray import drive

            final = drive(store, sweep_id, bars, max_parallel=args.max_parallel, retries=args.retries)
        else:
            from steerheal.sweeps_local import drive

            final = drive(store, sweep_id, bars)
    except KeyboardInterrupt:
        bars.close()
        sweeps.set_status(store, sweep_id, "cancelled")
        print(f"sweep {sweep_id} cancelled: finished runs are kept; `steerheal sweep --resume {sweep_id}` "
              "goes on", file=sys.stderr)
        return 130
    finally:
        bars.close()
    state = sweeps.sweep_state(store, sweep_id)
    sweeps.set_status(store, sweep_id, state["status"])
    return _report(store, sweep_id, final, args.json)


def _report(store, sweep_id: int, final: dict, as_json: bool) -> int:
    from steerheal.sweep_compare import compare, table_text
    from steerheal.sweeps import sweep_state

    result = compare(store, sweep_id)
    state = sweep_state(store, sweep_id)
    if as_json:
        print(json.dumps({**result, "runs": final["runs"]}))
    else:
        for run in final["runs"]:
            print(f"run {run['id']:>4}  {run['status']:<11} {run['label']}")
        print(table_text(result))
        print("(95% t intervals over seeds in brackets; trait = axis score of the healed model, incoherence = its "
              "KL rmse to base)")
    if state["status"] != "completed":
        print(f"sweep {sweep_id}: {state['counts']}; `steerheal sweep --resume {sweep_id}` runs the rest",
              file=sys.stderr)
        return 1
    return 0


@command("sweeps")
def cmd_sweeps(args) -> int:
    from steerheal import sweeps
    from steerheal.store import Store

    store = Store(args.db)
    if args.cancel is not None:
        sweeps.request_cancel(store, args.cancel)
        print(f"sweep {args.cancel}: cancel requested (queued runs cancelled; running ones stop at their next check)")
        return 0
    if args.compare is not None:
        from steerheal.sweep_compare import compare, table_text

        result = compare(store, args.compare)
        print(json.dumps(result) if args.json else table_text(result))
        return 0
    out = []
    for s in sweeps.sweeps(store):
        runs = [dict(id=r["id"], status=r["status"], stage=r["stage"], point=r["point"])
                for r in sweeps.sweep_runs(store, s["id"])]
        out.append(dict(id=s["id"], name=s["name"], backend=s["backend"], preset=s["preset"],
                        status=s["state"]["status"], counts=s["state"]["counts"], runs=runs))
    if args.json:
        print(json.dumps(out))
        return 0
    if not out:
        print("no sweeps yet: `steerheal sweep --preset seed-table` or `steerheal sweep --config sweep.toml`")
    for s in out:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(s["counts"].items()))
        print(f"sweep {s['id']:>3}  {s['status']:<11} {s['backend']:<5} {len(s['runs'])} runs ({counts})  {s['name']}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of runs (seeds x settings), locally or on a Ray cluster")
    p.add_argument("--config", type=Path, help="a sweep.toml: [base] run settings and [axes] lists (or [[runs]])")
    p.add_argument("--preset", help="a named sweep: seed-table (mean vs rmse barrier, 3 seeds)")
    p.add_argument("--axis", action="append", metavar="NAME=V1,V2",
                   help="vary a setting (repeatable), e.g. --axis agg=mean,rmse --axis seed=1,2,3")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="a base run setting (repeatable)")
    p.add_argument("--name", help="a name for the sweep")
    p.add_argument("--db", default="runs.db")
    p.add_argument("--backend", choices=["local", "ray"],
                   help="local (default; with --resume: the sweep's own): the store's job queue, one run per "
                        "device; ray: a Ray cluster (RAY_ADDRESS, else a local one; pip install 'steerheal[ray]')")
    p.add_argument("--max-parallel", type=int, help="runs in flight at once on Ray (default: one per GPU, "
                                                    "or per CPU without GPUs)")
    p.add_argument("--retries", type=int, default=2, help="Ray: retries of a run whose worker died (default 2)")
    p.add_argument("--resume", type=int, metavar="SWEEP_ID", help="go on with a sweep: finished runs are kept")
    p.add_argument("--yes", action="store_true", help="allow a grid of over 1000 runs")
    p.add_argument("--no-wait", action="store_true", help="local: queue the runs for the workers and return")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sweeps", help="list sweeps with their runs' status; cancel or compare one")
    p.add_argument("--db", default="runs.db")
    p.add_argument("--cancel", type=int, metavar="SWEEP_ID")
    p.add_argument("--compare", type=int, metavar="SWEEP_ID", help="the per-setting table with intervals over seeds")
    p.add_argument("--json", action="store_true")
