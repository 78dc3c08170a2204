"""Memory and DB size over a long run on the bundled model with tiny settings.

    python bench/long_run.py --rounds 20 [--ref base|prev] [--stages]

Prints, per round, the resident memory at the end of the round, the DB size and the round's
seconds, then the growth from round 2 to the last round (the target: under 10%) and how
linear the DB growth is. --stages also prints the memory after every stage (to find a leak).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steerheal.filters import FilterConfig
from steerheal.heal import HealConfig  # noqa: E402
from steerheal.loop import RunConfig, run_loop, start_run
from steerheal.memory import resident_mb  # noqa: E402
from steerheal.store import Store  # noqa: E402

# every completion is kept, so each round trains (the filters are not what this measures)
KEEP_ALL = FilterConfig(max_tail_perplexity=1e9, max_repetition=1.0, reject_narration=False, reject_refusal=False)


def tiny_config(rounds: int, ref: str, data_dir: str | None) -> RunConfig:
    return RunConfig(rounds=rounds, n_completions=4, max_new_tokens=8, filters=KEEP_ALL, eval_limit=1,
                     think_tokens=1, n_contexts=2, probe_tokens=2, data_dir=data_dir, coherence_floor=1e-9,
                     heal=HealConfig(rank=8, lora_alpha=16, epochs=1, ref=ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--ref", choices=["base", "prev"], default="prev")
    ap.add_argument("--data", default=None, help="tinymfv folder (default: STEERHEAL_TINYMFV_DIR or the demo set)")
    ap.add_argument("--stages", action="store_true", help="print memory after every stage")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "runs.db")
        run_id = start_run(store, tiny_config(args.rounds, args.ref, args.data))
        t0 = time.time()

        def say(stage: str, info: dict) -> None:
            if args.stages and stage != "heal step":
                print(f"  {time.time() - t0:7.1f}s round {info.get('round')} {stage:<22} rss {resident_mb():8.1f} MB",
                      flush=True)

        run_loop(store, run_id, say)
        rounds = [r for r in store.rows("rounds", run_id) if r["status"] == "completed"]
        print(f"{'round':>5} {'rss MB':>8} {'db MB':>7} {'seconds':>8}")
        for r in rounds:
            print(f"{r['round']:>5} {r['rss_mb']:>8.1f} {r['db_mb']:>7.3f} {r['finished'] - r['started']:>8.1f}")
        if len(rounds) > 3:
            rss = [r["rss_mb"] for r in rounds]
            print(f"memory growth round 2 -> {rounds[-1]['round']}: {100 * (rss[-1] / rss[2] - 1):+.1f}%")
            steps = [b["db_mb"] - a["db_mb"] for a, b in zip(rounds[1:], rounds[2:])]
            print(f"DB growth per round: min {min(steps) * 1024:.0f} KB, max {max(steps) * 1024:.0f} KB, "
                  f"mean {sum(steps) / len(steps) * 1024:.0f} KB")


if __name__ == "__main__":
    main()
